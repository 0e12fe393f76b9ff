//! The sandbox: the main job on a laptop, with no cluster. A real kube-apiserver,
//! kube-controller-manager and etcd (the e2e control plane, built once), the Datadog API
//! double serving a demo metric that rises and falls on a schedule, our agent (leader
//! election, the node-agent API, registered as `v1beta1.external.metrics.k8s.io` with a
//! certificate from `certs generate`), a demo Deployment and an HPA on the metric. One line
//! each time the metric or the replica count changes; Ctrl-C stops and removes everything.
//!
//! ```text
//! cargo run -p e2e --bin sandbox [-- --period SECONDS] [--cycles N]
//! ```
//!
//! `--period`: seconds for the metric to rise from 0 to its peak and fall back (default 180).
//! `--cycles`: stop by itself after that many rises and falls (default: run until Ctrl-C).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::agent::Agent;
use e2e::agent_env::{
    AgentPorts, MetricsApiClient, ServingCert, agent_binary, agent_settings, register_metrics_api,
};
use e2e::controlplane::{ControlPlane, ExternalHpa, MetricTarget, labels};
use e2e::datadog_double::{DatadogDouble, points_ending_now};

const NAMESPACE: &str = "demo";
const DEPLOYMENT: &str = "web";
const METRIC: &str = "demo.queue.depth";
/// What the agent asks Datadog for the HPA's metric (rollup set to 5 s below).
const QUERY: &str = "avg:demo.queue.depth{app:web}.rollup(5)";
/// Replicas = ceil(metric / TARGET), between 1 and MAX_REPLICAS.
const TARGET: f64 = 10.0;
const PEAK: f64 = 50.0;
const MAX_REPLICAS: i32 = 6;
const POLL: Duration = Duration::from_secs(2);

struct Options {
    period: Duration,
    cycles: Option<u32>,
}

fn options() -> Result<Options> {
    let mut options = Options {
        period: Duration::from_secs(180),
        cycles: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<u64> {
            args.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} takes a whole number"))
        };
        match arg.as_str() {
            "--period" => options.period = Duration::from_secs(value("--period")?.max(20)),
            "--cycles" => {
                options.cycles = Some(u32::try_from(value("--cycles")?.max(1)).unwrap_or(u32::MAX));
            }
            "-h" | "--help" => {
                println!("sandbox [--period SECONDS] [--cycles N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (sandbox [--period SECONDS] [--cycles N])"),
        }
    }
    Ok(options)
}

/// The demo metric at `elapsed`: a triangle from 0 up to PEAK and back over `period`, in
/// steps of 10 so each step moves the HPA.
fn metric_at(elapsed: Duration, period: Duration) -> f64 {
    let phase = (elapsed.as_secs_f64() % period.as_secs_f64()) / period.as_secs_f64();
    let triangle = 1.0 - (2.0 * phase - 1.0).abs();
    (triangle * PEAK / 10.0).round() * 10.0
}

fn now() -> String {
    jiff::Zoned::now().strftime("%H:%M:%S").to_string()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options = options()?;
    eprintln!(
        "sandbox: building the agent and starting a real control plane (the first run builds kube-apiserver and kube-controller-manager from source: several minutes, once)"
    );
    let binary = agent_binary().await?;
    let cp = ControlPlane::start().await?;
    cp.create_namespace(NAMESPACE).await?;
    let cert = ServingCert::from_agent_cli(&binary, cp.agent_namespace())?;
    let double = DatadogDouble::start().await?;
    double.set_rate_limit(100_000, 3600);
    double.set_series(QUERY, points_ending_now(&[0.0; 4], 5));
    let ports = AgentPorts::pick()?;
    let settings = agent_settings(&cp, &binary, "sandbox-agent", &double, &cert, ports)
        .env("DD_LEADER_ELECTION", "true")
        .env("DD_LEADER_ELECTION_DEFAULT_RESOURCE", "lease")
        .env("DD_EXTERNAL_METRICS_PROVIDER_ROLLUP", "5")
        .env("DD_LOG_LEVEL", "info");
    let agent = Agent::spawn(settings).await?;
    register_metrics_api(&cp, &cert, ports.metrics_api).await?;
    let api = MetricsApiClient::new(&cp, &cert, ports.metrics_api)?;

    cp.create_deployment(NAMESPACE, DEPLOYMENT, 1, &labels(&[("app", DEPLOYMENT)]))
        .await?;
    let mut hpa = ExternalHpa::new(
        DEPLOYMENT,
        METRIC,
        MetricTarget::AverageValue(TARGET.to_string()),
    )
    .label("app", DEPLOYMENT);
    hpa.max_replicas = MAX_REPLICAS;
    cp.create_external_hpa(NAMESPACE, &hpa).await?;

    let kubeconfig = cp.kubeconfig_admin_path().display().to_string();
    let mut pids = cp.all_pids();
    pids.push(agent.pid());
    println!(
        "sandbox: ready. The agent serves the HPA demo/{DEPLOYMENT} from the Datadog double's {METRIC}."
    );
    println!("  kubeconfig: {kubeconfig}");
    println!("  kubectl --kubeconfig {kubeconfig} -n {NAMESPACE} get hpa {DEPLOYMENT} --watch");
    println!(
        "  kubectl --kubeconfig {kubeconfig} get --raw /apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/{METRIC}"
    );
    println!(
        "  DD_AUTH_TOKEN_FILE_PATH={} DD_CLUSTER_AGENT_CMD_PORT={} {} status",
        agent.local_token_path().display(),
        ports.cmd,
        binary.display()
    );
    println!(
        "  pids: {}",
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("sandbox: Ctrl-C stops and removes everything.");

    let started = Instant::now();
    let mut served: Option<String> = None;
    let mut replicas: Option<i32> = None;
    let mut target = f64::NAN;
    let finished = async {
        loop {
            let elapsed = started.elapsed();
            if options
                .cycles
                .is_some_and(|n| elapsed >= options.period * n)
            {
                return Ok::<(), anyhow::Error>(());
            }
            let want = metric_at(elapsed, options.period);
            if want != target {
                target = want;
                double.set_series(QUERY, points_ending_now(&[want; 4], 5));
                println!("{} datadog   {QUERY} is now {want}", now());
            } else {
                // Fresh points, so the agent never sees the value go stale.
                double.set_series(QUERY, points_ending_now(&[want; 4], 5));
            }
            if let Ok(answer) = api.get_metric(NAMESPACE, METRIC, "app=web").await {
                let value = if answer.status == 200 {
                    answer.body["items"][0]["value"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned()
                } else {
                    format!("error {}: {}", answer.status, answer.message())
                };
                if served.as_ref() != Some(&value) {
                    println!(
                        "{} metrics   external.metrics.k8s.io serves {METRIC} = {value}",
                        now()
                    );
                    served = Some(value);
                }
            }
            if let Ok(r) = cp.deployment_replicas(NAMESPACE, DEPLOYMENT).await
                && replicas != Some(r.spec)
            {
                match replicas {
                    Some(before) => println!(
                        "{} replicas  demo/{DEPLOYMENT}: {before} -> {}",
                        now(),
                        r.spec
                    ),
                    None => println!("{} replicas  demo/{DEPLOYMENT}: {}", now(), r.spec),
                }
                replicas = Some(r.spec);
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::select! {
        result = finished => result?,
        _ = tokio::signal::ctrl_c() => println!("sandbox: stopping"),
    }
    drop(agent);
    cp.shutdown()?;
    drop(double);
    println!("sandbox: stopped; nothing left running");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metric_rises_to_the_peak_and_falls_back_in_steps() {
        let period = Duration::from_secs(100);
        let at = |s: u64| metric_at(Duration::from_secs(s), period);
        let cases = [
            (0, 0.0),
            (10, 10.0),
            (25, 30.0),
            (50, 50.0),
            (75, 30.0),
            (99, 0.0),
            (100, 0.0),
            (150, 50.0),
        ];
        for (secs, want) in cases {
            assert_eq!(at(secs), want, "{secs}s");
        }
    }
}
