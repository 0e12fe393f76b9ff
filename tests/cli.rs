//! The binary's behaviour as a user sees it: exit codes and the one line it prints.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

const KEY: &str = "0123456789abcdef0123456789abcdef";

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_datadog-cluster-agent"));
    // An empty config folder keeps the machine's /etc/datadog-agent out of the test.
    cmd.args(["-c", dir.path().to_str().unwrap()])
        .args(args)
        .env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A start-up refusal is settled from the configuration alone, before any network call, so
/// the bound of a second holds with room to spare even on a loaded machine.
/// `RUST_BACKTRACE=full` makes any panic on the way print its backtrace, which
/// `assert_no_panic` would see.
fn run_refused_start(env: &[(&str, &str)]) -> Output {
    let mut env = env.to_vec();
    env.push(("RUST_BACKTRACE", "full"));
    let started = Instant::now();
    let out = run(&["start"], &env);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "start took {took:?} to refuse"
    );
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_no_panic(o: &Output) {
    let err = stderr(o);
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn help_lists_the_commands() {
    let out = run(&["--help"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // Exactly the commands that work (clap adds `help`): a command that does nothing is a
    // defect, so one appearing here must come with its tests.
    let commands: Vec<&str> = text
        .split("Commands:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no Commands: section in --help:\n{text}"))
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        [
            "start", "version", "config", "metamap", "health", "status", "explain", "flare",
            "certs", "help"
        ],
        "--help:\n{text}"
    );
    for flag in ["-c, --cfgpath <PATH>", "-n, --no-color"] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
}

#[test]
fn start_without_api_key_fails_with_one_line() {
    let out = run_refused_start(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "Error: no API key configured: set DD_API_KEY or api_key\n"
    );
    assert_no_panic(&out);
    // `start` is the default command.
    let out = run(&[], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no API key configured"));
}

#[test]
fn start_with_a_short_token_names_the_token_and_32() {
    let out = run_refused_start(&[
        ("DD_API_KEY", KEY),
        ("DD_CLUSTER_AGENT_AUTH_TOKEN", "short"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cluster_agent.auth_token") && err.contains("32"),
        "{err}"
    );
    assert_no_panic(&out);
}

#[test]
fn start_with_a_malformed_value_names_the_setting() {
    let out = run(
        &["start"],
        &[("DD_API_KEY", KEY), ("DD_LEADER_ELECTION", "maybe")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("leader_election") && err.contains("DD_LEADER_ELECTION"),
        "{err}"
    );
    assert_no_panic(&out);
}

#[test]
fn config_prints_scrubbed_yaml_with_env_over_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("datadog-cluster.yaml"),
        "site: datadoghq.eu\ncluster_agent:\n  cmd_port: 6000\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_datadog-cluster-agent"))
        .args(["-c", dir.path().to_str().unwrap(), "config"])
        .env_clear()
        .env("DD_API_KEY", KEY)
        .env("DD_CLUSTER_AGENT_CMD_PORT", "7000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(!yaml.contains(KEY), "{yaml}");
    assert!(
        yaml.contains("api_key: \"***************************bcdef\""),
        "{yaml}"
    );
    assert!(yaml.contains("cmd_port: 7000"), "{yaml}");
    assert!(yaml.contains("site: datadoghq.eu"), "{yaml}");
}

#[test]
fn config_with_invalid_yaml_reports_the_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("datadog-cluster.yaml"), "site: [\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_datadog-cluster-agent"))
        .args(["-c", dir.path().to_str().unwrap(), "config"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("invalid YAML") && err.contains("line"),
        "{err}"
    );
    assert_no_panic(&out);
}

#[test]
fn version_names_commit_and_compiler() {
    let out = run(&["version"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(env!("CARGO_PKG_VERSION"))
            && text.contains("Commit:")
            && text.contains("rustc"),
        "{text}"
    );
}

/// A start that passes validation, so logging is up, and then finds its Kubernetes client as
/// the environment says: the error tells which source was chosen.
fn start_to_the_kubernetes_client(extra: &[(&str, &str)]) -> Output {
    let mut env = vec![("DD_API_KEY", KEY), ("RUST_BACKTRACE", "full")];
    env.extend_from_slice(extra);
    let out = run(&["start"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_no_panic(&out);
    out
}

#[test]
fn the_kubernetes_configuration_source_follows_the_precedence() {
    let missing = "/nonexistent/kubeconfig";
    // Explicit path: used even in a pod.
    for in_pod in [false, true] {
        let mut env = vec![("DD_KUBERNETES_KUBECONFIG_PATH", missing)];
        if in_pod {
            env.push(("KUBERNETES_SERVICE_HOST", "10.0.0.1"));
            env.push(("KUBERNETES_SERVICE_PORT", "443"));
        }
        let err = stderr(&start_to_the_kubernetes_client(&env));
        assert!(
            err.contains(&format!("cannot load kubeconfig {missing}"))
                && err.contains("kubernetes_kubeconfig_path"),
            "in pod {in_pod}: {err}"
        );
    }
    // In a pod without a path: the service account (absent on this machine).
    let err = stderr(&start_to_the_kubernetes_client(&[
        ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
    ]));
    assert!(
        err.contains("cannot load the in-cluster Kubernetes configuration"),
        "{err}"
    );
    // Neither: KUBECONFIG, here pointing at nothing, is named as the file that is missing.
    let err = stderr(&start_to_the_kubernetes_client(&[("KUBECONFIG", missing)]));
    let line = err
        .lines()
        .find(|l| l.starts_with("Error: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(
        line.contains(&format!(
            "cannot load kubeconfig {missing} (from KUBECONFIG)"
        )) && line.contains("No such file or directory"),
        "{line}"
    );
    // Nor KUBECONFIG nor ~/.kube/config: said so, with what to set.
    let home = tempfile::tempdir().unwrap();
    let err = stderr(&start_to_the_kubernetes_client(&[(
        "HOME",
        home.path().to_str().unwrap(),
    )]));
    assert!(
        err.contains("cannot find a Kubernetes configuration")
            && err.contains("set kubernetes_kubeconfig_path or KUBECONFIG"),
        "{err}"
    );
}

#[test]
fn text_logs_into_a_pipe_carry_no_colour_codes() {
    for args in [&[][..], &["-n"][..]] {
        let mut env = vec![("DD_API_KEY", KEY), ("KUBECONFIG", "/nonexistent")];
        let mut cmd_args = args.to_vec();
        cmd_args.push("start");
        env.push(("RUST_BACKTRACE", "full"));
        let out = run(&cmd_args, &env);
        let err = stderr(&out);
        assert!(
            err.contains("starting the Datadog Cluster Agent"),
            "{args:?}: {err}"
        );
        assert!(!err.contains('\u{1b}'), "{args:?}: escape codes in {err:?}");
    }
}

#[test]
fn a_malformed_setting_nothing_reads_yet_does_not_stop_start() {
    let home = tempfile::tempdir().unwrap();
    let err = stderr(&start_to_the_kubernetes_client(&[
        ("DD_KUBERNETES_INFORMERS_RESYNC_PERIOD", "soon"),
        ("HOME", home.path().to_str().unwrap()),
    ]));
    // Past the configuration, with a warning, up to the next thing missing here.
    assert!(
        err.contains("ignoring the value of kubernetes_informers_resync_period (from DD_KUBERNETES_INFORMERS_RESYNC_PERIOD)"),
        "{err}"
    );
    assert!(
        err.contains("cannot find a Kubernetes configuration"),
        "{err}"
    );
}

/// Without a running agent, `metamap` says so in one line, naming what it looked for.
#[test]
fn metamap_without_an_agent_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("auth_token");
    let token_path = token_file.to_str().unwrap();
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let env = [
        ("DD_AUTH_TOKEN_FILE_PATH", token_path),
        ("DD_CLUSTER_AGENT_CMD_PORT", port.as_str()),
        ("RUST_BACKTRACE", "full"),
    ];
    // No token file: the agent never ran with this configuration.
    let out = run(&["metamap"], &env);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_no_panic(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("Error: cannot read the local API token file")
            && err.contains(token_path)
            && err.contains("is the cluster agent running"),
        "{err}"
    );
    // A token, but no agent.
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef0123").unwrap();
    let out = run(&["metamap", "node-1"], &env);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_no_panic(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "Error: cannot reach the cluster agent at https://127.0.0.1:{port}/api/v1/tags/pod/node-1 (is it running?)"
        )),
        "{err}"
    );
    assert!(!err.contains("0123456789abcdef"), "token echoed: {err}");
    assert!(out.stdout.is_empty());
}

/// `health` and `status` share the local client: without an agent they fail in one line,
/// never printing a report they could not read.
#[test]
fn health_and_status_without_an_agent_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("auth_token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef0123").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let env = [
        ("DD_AUTH_TOKEN_FILE_PATH", token_file.to_str().unwrap()),
        ("DD_CLUSTER_AGENT_CMD_PORT", port.as_str()),
    ];
    for (args, path) in [
        (&["health", "-t", "5"][..], "/status/health"),
        (&["status", "--json"][..], "/status"),
        // Go's short flags.
        (&["status", "-j"][..], "/status"),
        (&["status", "-p"][..], "/status"),
    ] {
        let out = run(args, &env);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert_no_panic(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "Error: cannot reach the cluster agent at https://127.0.0.1:{port}{path} (is it running?)"
            )),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
