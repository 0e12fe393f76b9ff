//! The README's first command: `cargo run -p e2e --bin sandbox` shows the demo HPA scaling
//! up and back down on the Datadog double's metric, through the real aggregator and HPA
//! controller, and Ctrl-C leaves nothing running.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::process::send_signal;

/// Generous: a busy 2-core machine, a fresh control plane, an HPA sync every few seconds.
const DEADLINE: Duration = Duration::from_secs(420);

/// `demo/web: 2 -> 3` as (2, 3).
fn replica_change(line: &str) -> Option<(i32, i32)> {
    let rest = line.split_once("replicas  demo/web: ")?.1;
    let (before, after) = rest.split_once(" -> ")?;
    Some((before.trim().parse().ok()?, after.trim().parse().ok()?))
}

fn alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_sandbox_scales_the_demo_up_and_down_and_ctrl_c_removes_everything() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .args(["--period", "90"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let started = Instant::now();
    let mut seen = Vec::new();
    let mut pids: Vec<u32> = Vec::new();
    let mut peak = 0;
    let mut scaled_down = false;
    while !scaled_down {
        let left = DEADLINE.saturating_sub(started.elapsed());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no scale-up and scale-down within {DEADLINE:?}:\n{}",
                seen.join("\n")
            )
        });
        if let Some(list) = line.trim().strip_prefix("pids: ") {
            pids = list.split(' ').map(|p| p.parse().unwrap()).collect();
        }
        if let Some((before, after)) = replica_change(&line) {
            peak = peak.max(after);
            scaled_down = after < before && peak >= 3;
        }
        seen.push(line);
    }
    let log = seen.join("\n");
    assert!(log.contains("kubeconfig: "), "{log}");
    assert!(log.contains(" status"), "{log}");
    assert!(
        log.contains("metrics   external.metrics.k8s.io serves demo.queue.depth = 30"),
        "{log}"
    );
    assert!(
        pids.len() >= 4,
        "the control plane and the agent: {pids:?}\n{log}"
    );
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");

    send_signal(child.id(), "INT").unwrap();
    let stop = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stop.elapsed() < Duration::from_secs(120),
            "the sandbox did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "{status:?}");
    reader.join().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        rest.iter()
            .any(|l| l == "sandbox: stopped; nothing left running"),
        "{rest:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let left: Vec<&u32> = pids.iter().filter(|p| alive(**p)).collect();
    assert!(left.is_empty(), "still running after Ctrl-C: {left:?}");
}

#[test]
fn replica_lines_parse() {
    assert_eq!(
        replica_change("00:18:22 replicas  demo/web: 5 -> 4"),
        Some((5, 4))
    );
    assert_eq!(replica_change("00:17:36 replicas  demo/web: 1"), None);
    assert_eq!(replica_change("00:17:36 datadog   x is now 10"), None);
}
