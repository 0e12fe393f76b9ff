//! Load-test target for the node-agent API (see `bench/node_api.sh` and BENCHMARKS.md):
//! the real service and TLS server over a synthetic cluster, parsed and trimmed as the
//! watches do and mapped by the mapper's own build. Not a test: it prints the build time
//! and its memory, serves until SIGTERM or its time limit, and prints its peak memory.
//!
//! ```text
//! bench_node_api [--port N] [--max-secs N] [--nodes N] [--pods N] [--services N]
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use datadog_cluster_agent::node_api_bench::{Shape, SyntheticCluster, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Kept in step with TOKEN in bench/node_api.sh.
const TOKEN: &str = "benchNodeAgentToken0123456789abcdefABCDEF";

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

struct Args {
    port: u16,
    max_secs: u64,
    shape: Shape,
}

fn parse_args() -> Result<Args> {
    let mut out = Args {
        port: 0,
        // Stops by itself even if the script that started it dies.
        max_secs: 600,
        shape: Shape {
            nodes: 5_000,
            pods: 150_000,
            services: 10_000,
            namespaces: 100,
        },
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().with_context(|| flag.clone());
        match flag.as_str() {
            "--port" => out.port = value.parse().context("--port")?,
            "--max-secs" => out.max_secs = value.parse().context("--max-secs")?,
            "--nodes" => out.shape.nodes = number()?,
            "--pods" => out.shape.pods = number()?,
            "--services" => out.shape.services = number()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if out.shape.nodes == 0 || out.shape.services == 0 || out.shape.pods < out.shape.services {
        bail!("need nodes > 0 and pods >= services > 0");
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let rss_before = status_kib("VmRSS:").unwrap_or(0);
    let started = Instant::now();
    let cluster = Arc::new(SyntheticCluster::new(args.shape)?);
    let pods = cluster.mapped_pods();
    if pods != args.shape.pods / args.shape.services * args.shape.services {
        bail!("the map holds {pods} pods, not all of the cluster's");
    }
    println!(
        "cluster: {} nodes, {pods} pods, {} Endpoints; parsed in {:?}; map built in {:?}",
        args.shape.nodes,
        cluster.endpoints_objects(),
        started.elapsed(),
        cluster.build_time
    );
    println!(
        "rss: {} KiB at start, {} KiB with the cluster loaded (peak so far {} KiB)",
        rss_before,
        status_kib("VmRSS:").unwrap_or(0),
        status_kib("VmHWM:").unwrap_or(0)
    );
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(cluster, listener, TOKEN, shutdown.clone()));
    // The script waits for this line before loading the server.
    println!("listening {addr}");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = tokio::time::sleep(Duration::from_secs(args.max_secs)) => {
            eprintln!("time limit reached");
        }
    }
    println!(
        "rss at exit: {} KiB (peak {} KiB)",
        status_kib("VmRSS:").unwrap_or(0),
        status_kib("VmHWM:").unwrap_or(0)
    );
    shutdown.cancel();
    server.await??;
    Ok(())
}
