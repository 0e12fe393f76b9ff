//! Runs the agent binary under test (our `datadog-cluster-agent`) as a child process.
//!
//! The process lives in its own [`ProcessGroup`], so it dies with the [`Agent`] handle or with
//! the test process (even on SIGKILL). Its stdout and stderr go to one log file in the run
//! directory; the log is printed when start-up fails and when the handle is dropped during a
//! panic.
//!
//! Stopping and killing wait for the process synchronously (bounded by the stop grace period),
//! which keeps this usable from current-thread tokio tests.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::controlplane::ensure_crypto_provider;
use crate::process::{self, ProcessGroup};

/// Environment variable that overrides the agent binary path.
pub const DCA_BIN_ENV: &str = "DCA_BIN";

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Shown in logs and file names.
    pub name: String,
    /// Binary to run; default [`default_binary`].
    pub binary: Option<PathBuf>,
    /// Arguments; default `["start"]`.
    pub args: Vec<String>,
    /// Environment set for the process on top of a minimal base (see `inherit_env`).
    pub env: BTreeMap<String, String>,
    /// Pass this test process's whole environment through. Off by default so a developer's
    /// `DD_*` or `KUBECONFIG` cannot leak into a test; only PATH, HOME, TMPDIR, LANG and
    /// RUST_BACKTRACE are passed then.
    pub inherit_env: bool,
    /// HTTPS URL polled until it answers 2xx (any certificate accepted). None: ready at spawn.
    pub readiness_url: Option<String>,
    /// How long start-up may take before it counts as failed.
    pub ready_timeout: Duration,
    /// SIGTERM → SIGKILL grace for `stop`, `restart` and drop.
    pub stop_grace: Duration,
    /// Directory for the log file (and anything the test puts there). Default: a fresh
    /// temporary directory owned by the `Agent`.
    pub run_dir: Option<PathBuf>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            name: "datadog-cluster-agent".to_owned(),
            binary: None,
            args: vec!["start".to_owned()],
            env: BTreeMap::new(),
            inherit_env: false,
            readiness_url: None,
            ready_timeout: Duration::from_secs(120),
            stop_grace: process::DEFAULT_STOP_GRACE,
            run_dir: None,
        }
    }
}

impl AgentSettings {
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.insert(key.to_owned(), value.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    pub fn readiness_url(mut self, url: impl Into<String>) -> Self {
        self.readiness_url = Some(url.into());
        self
    }

    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }
}

/// `$DCA_BIN`, else `<target dir>/debug/datadog-cluster-agent` of this workspace.
pub fn default_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(DCA_BIN_ENV) {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug").join("datadog-cluster-agent")
}

/// A running (or stopped) agent process.
pub struct Agent {
    // Declared first so it drops (stops the process) before the run directory is removed.
    group: ProcessGroup,
    settings: AgentSettings,
    binary: PathBuf,
    run_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    log_path: PathBuf,
    pid: u32,
    starts: u32,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.settings.name)
            .field("pid", &self.pid)
            .field("log", &self.log_path)
            .finish_non_exhaustive()
    }
}

const LOCAL_TOKEN_ENV: &str = "DD_AUTH_TOKEN_FILE_PATH";

impl Agent {
    /// Starts the agent and waits until it is ready.
    pub async fn spawn(settings: AgentSettings) -> Result<Self> {
        ensure_crypto_provider();
        let binary = settings.binary.clone().unwrap_or_else(default_binary);
        if !binary.is_file() {
            bail!(
                "agent binary {} not found: build it first (`cargo build -p datadog-cluster-agent`) \
                 or point {DCA_BIN_ENV} at it",
                binary.display()
            );
        }
        let (tmp, run_dir) = match &settings.run_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                (None, dir.clone())
            }
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("dca-e2e-agent-")
                    .tempdir()
                    .context("creating agent run directory")?;
                let path = tmp.path().to_owned();
                (Some(tmp), path)
            }
        };
        let log_path = run_dir.join(format!("{}.log", settings.name));
        // Only a directory the harness created may be removed behind the test's back.
        let group = ProcessGroup::new(&settings.name, tmp.as_ref().map(|t| t.path()))?;
        let mut agent = Self {
            group,
            settings,
            binary,
            run_dir,
            _tmp: tmp,
            log_path,
            pid: 0,
            starts: 0,
        };
        agent.start_process()?;
        agent.wait_ready().await?;
        Ok(agent)
    }

    fn start_process(&mut self) -> Result<()> {
        self.starts += 1;
        // The log is appended to, so every (re)start stays in one file, separated by markers.
        append_marker(
            &self.log_path,
            &format!(
                "===== e2e harness: start #{} of {} {:?} =====",
                self.starts,
                self.binary.display(),
                self.settings.args
            ),
        )?;
        let mut command = Command::new(&self.binary);
        command.args(&self.settings.args).current_dir(&self.run_dir);
        if !self.settings.inherit_env {
            command.env_clear();
            for key in ["PATH", "HOME", "TMPDIR", "LANG", "RUST_BACKTRACE"] {
                if let Some(value) = std::env::var_os(key) {
                    command.env(key, value);
                }
            }
            if std::env::var_os("RUST_BACKTRACE").is_none() {
                command.env("RUST_BACKTRACE", OsString::from("1"));
            }
        }
        command.envs(&self.settings.env);
        // The agent writes its local CLI token beside its configuration, /etc/datadog-agent
        // by default; a test agent keeps it in its run directory, where `metamap` finds it.
        if !self.settings.env.contains_key(LOCAL_TOKEN_ENV) {
            command.env(LOCAL_TOKEN_ENV, self.local_token_path());
        }
        self.group.forget_exited();
        self.pid = self
            .group
            .spawn(&self.settings.name, command, &self.log_path)?;
        Ok(())
    }

    /// Polls the readiness URL until it answers 2xx; fails early if the process exits.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let Some(url) = self.settings.readiness_url.clone() else {
            return Ok(());
        };
        let http = reqwest::Client::builder()
            // The agent's serving certificate is usually self-signed; readiness is all we check.
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(5))
            .build()
            .context("building readiness client")?;
        let deadline = Instant::now() + self.settings.ready_timeout;
        loop {
            if let Some(status) = self.group.exit_status(self.pid)? {
                bail!(
                    "{} exited before it was ready ({}); log {}:\n{}",
                    self.settings.name,
                    process::describe_status(status),
                    self.log_path.display(),
                    self.log()
                );
            }
            let last = match http.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => format!("HTTP {}", resp.status()),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready at {url} within {:?} (last: {last}); log {}:\n{}",
                    self.settings.name,
                    self.settings.ready_timeout,
                    self.log_path.display(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process group (guardian PID), for hygiene checks.
    pub fn pgid(&self) -> u32 {
        self.group.pgid()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Where the agent keeps the token of our own CLI (`DD_AUTH_TOKEN_FILE_PATH`).
    pub fn local_token_path(&self) -> PathBuf {
        self.settings
            .env
            .get(LOCAL_TOKEN_ENV)
            .map_or_else(|| self.run_dir.join("auth_token"), PathBuf::from)
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Runs one of the binary's client commands (`metamap`, `health`, ...) against this
    /// agent as an operator does in its container: the agent's config folder, local token
    /// and ports, and nothing else from this process's environment.
    pub fn command(&self, args: &[&str]) -> Result<std::process::Output> {
        self.command_with_env(args, &[])
    }

    /// [`command`](Self::command) with more environment (`DD_API_KEY` for `flare --send`).
    pub fn command_with_env(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<std::process::Output> {
        let binary = self.settings.binary.clone().unwrap_or_else(default_binary);
        let mut command = Command::new(binary);
        command
            .arg("-c")
            .arg(&self.run_dir)
            .args(args)
            .env_clear()
            .env(LOCAL_TOKEN_ENV, self.local_token_path());
        for key in [
            "DD_CLUSTER_AGENT_CMD_PORT",
            "DD_BIND_HOST",
            "DD_METRICS_PORT",
            "DD_EXPVAR_PORT",
        ] {
            if let Some(value) = self.settings.env.get(key) {
                command.env(key, value);
            }
        }
        command.envs(env.iter().copied());
        command
            .output()
            .with_context(|| format!("running {args:?} against {}", self.settings.name))
    }

    /// The captured stdout+stderr so far (last 256 KiB).
    pub fn log(&self) -> String {
        process::log_tail(&self.log_path, 256 * 1024)
    }

    /// Whether the current process is still running.
    pub fn is_running(&mut self) -> Result<bool> {
        Ok(self.group.exit_status(self.pid)?.is_none())
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        self.group.exit_status(self.pid)
    }

    /// SIGKILL, no grace: a crash as far as the agent can tell.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        self.group.kill9(self.pid)
    }

    /// SIGTERM, then SIGKILL after the grace period.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.group.stop(self.pid, self.settings.stop_grace)
    }

    /// Sends a signal (`HUP`, `USR1`, …) without waiting.
    pub fn signal(&self, signal: &str) -> Result<()> {
        process::send_signal(self.pid, signal)
    }

    /// Stops the process if it still runs (SIGTERM) and starts it again with the same settings,
    /// then waits until it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        if self.is_running()? {
            self.stop()?;
        }
        self.start_process()?;
        self.wait_ready().await
    }

    /// Starts the process again after it exited or was killed (no stop first).
    pub async fn start_again(&mut self) -> Result<()> {
        if self.is_running()? {
            return Err(anyhow!(
                "{} (pid {}) is still running",
                self.settings.name,
                self.pid
            ));
        }
        self.start_process()?;
        self.wait_ready().await
    }

    /// Stops the process and checks that nothing it started survives.
    pub fn shutdown(mut self) -> Result<()> {
        self.group.shutdown()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "===== {} log ({}) =====\n{}\n===== end of {} log =====",
                self.settings.name,
                self.log_path.display(),
                self.log(),
                self.settings.name
            );
        }
        if panicking || std::env::var_os(process::KEEP_DIR_ENV).is_some() {
            // Keep the run directory for a post-mortem.
            if let Some(tmp) = self._tmp.take() {
                let kept = tmp.keep();
                eprintln!("e2e agent: kept run directory {}", kept.display());
            }
        }
        // `group` drops next: it stops the process and panics loudly if anything survives.
    }
}

fn append_marker(path: &Path, line: &str) -> Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "{line}").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::CertAuthority;
    use crate::process::pid_alive;
    use crate::test_apiserver::{TestApiServer, TestApiServerConfig};
    use std::os::unix::process::ExitStatusExt;

    fn sleeper() -> AgentSettings {
        AgentSettings {
            name: "sleeper".to_owned(),
            binary: Some(PathBuf::from("/bin/sleep")),
            args: vec!["600".to_owned()],
            stop_grace: Duration::from_secs(5),
            ..AgentSettings::default()
        }
    }

    async fn wait_dead(pids: &[u32]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while pids.iter().any(|p| pid_alive(*p)) {
            assert!(
                Instant::now() < deadline,
                "processes {pids:?} still alive: {:?}",
                pids.iter().filter(|p| pid_alive(**p)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn missing_binary_is_a_clear_error() {
        let err = Agent::spawn(AgentSettings::default().binary("/nonexistent/dca"))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("cargo build -p datadog-cluster-agent"));
    }

    #[tokio::test]
    async fn kill9_restart_and_drop() {
        let mut agent = Agent::spawn(sleeper().env("MARKER", "x")).await.unwrap();
        let first = agent.pid();
        assert!(pid_alive(first));
        let status = agent.kill9().unwrap();
        assert_eq!(status.signal(), Some(9));
        assert!(!pid_alive(first));
        agent.start_again().await.unwrap();
        let second = agent.pid();
        assert_ne!(first, second);
        agent.restart().await.unwrap();
        let third = agent.pid();
        assert!(!pid_alive(second));
        assert!(pid_alive(third));
        let pgid = agent.pgid();
        let log = agent.log();
        assert_eq!(log.matches("e2e harness: start #").count(), 3, "{log}");
        drop(agent);
        assert!(!pid_alive(third));
        assert!(!pid_alive(pgid));
    }

    #[tokio::test]
    async fn env_is_minimal_and_output_is_captured() {
        let settings = AgentSettings {
            name: "printer".to_owned(),
            binary: Some(PathBuf::from("/bin/sh")),
            args: vec![
                "-c".to_owned(),
                "echo out=$E2E_VALUE; echo err=${CARGO:-unset} >&2; sleep 600".to_owned(),
            ],
            ..AgentSettings::default()
        }
        .env("E2E_VALUE", "42");
        let agent = Agent::spawn(settings).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        // The start marker echoes the arguments, so match whole output lines only.
        let has_line = |prefix: &str| agent.log().lines().any(|l| l.starts_with(prefix));
        while !(has_line("out=") && has_line("err=")) {
            assert!(Instant::now() < deadline, "no output: {}", agent.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = agent.log();
        assert!(log.lines().any(|l| l == "out=42"), "{log}");
        // cargo sets CARGO for tests; a minimal environment must not pass it on.
        assert!(log.lines().any(|l| l == "err=unset"), "{log}");
    }

    #[tokio::test]
    async fn readiness_over_tls_and_early_exit_reports_the_log() {
        let ca = CertAuthority::new("agent-test-ca").unwrap();
        let server = TestApiServer::start(TestApiServerConfig {
            group: "ready.example.com".to_owned(),
            version: "v1".to_owned(),
            serving: ca.issue_server(&["localhost"]).unwrap(),
            client_ca_pem: None,
            responder: None,
        })
        .await
        .unwrap();
        let url = format!("{}/apis/ready.example.com/v1", server.url());
        let agent = Agent::spawn(sleeper().readiness_url(&url)).await.unwrap();
        assert!(!server.requests_to("/apis/ready.example.com/v1").is_empty());
        drop(agent);

        let failing = AgentSettings {
            name: "failing".to_owned(),
            binary: Some(PathBuf::from("/bin/sh")),
            args: vec![
                "-c".to_owned(),
                "echo boom-before-ready >&2; exit 3".to_owned(),
            ],
            readiness_url: Some("https://127.0.0.1:1/healthz".to_owned()),
            ..AgentSettings::default()
        };
        let err = format!("{:#}", Agent::spawn(failing).await.unwrap_err());
        assert!(err.contains("exit code 3"), "{err}");
        assert!(err.contains("boom-before-ready"), "{err}");
    }

    const CHILD_ENV: &str = "DCA_E2E_AGENT_HYGIENE_CHILD";

    /// The child role of `agent_dies_with_the_test_process`, once it reported its agent's PID,
    /// process group and run directory.
    fn spawn_hygiene_child() -> (process::ChildTest, Vec<u32>, PathBuf) {
        let child = process::ChildTest::spawn(
            "agent::tests::agent_dies_with_the_test_process",
            &[(CHILD_ENV, "1")],
        )
        .unwrap();
        let line = child
            .wait_for_line("E2E-PIDS ", Duration::from_secs(120))
            .unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        let pids = fields[..2].iter().map(|p| p.parse().unwrap()).collect();
        (child, pids, PathBuf::from(fields[2]))
    }

    /// Runs this very test binary again as a "test process" that starts an agent, then ends that
    /// process with SIGKILL, SIGTERM, and Ctrl-C (SIGINT to its process group, as a terminal
    /// sends it) in turn: the agent must die each time.
    #[tokio::test]
    async fn agent_dies_with_the_test_process() {
        if std::env::var_os(CHILD_ENV).is_some() {
            // Child role: start an agent, report its PIDs, then wait to be killed.
            let agent = Agent::spawn(sleeper()).await.unwrap();
            println!(
                "E2E-PIDS {} {} {}",
                agent.pid(),
                agent.pgid(),
                agent.run_dir().display()
            );
            tokio::task::spawn_blocking(process::read_parent_line)
                .await
                .unwrap();
            return;
        }
        for (signal, whole_group, number) in
            [("KILL", false, 9), ("TERM", false, 15), ("INT", true, 2)]
        {
            let (mut child, pids, run_dir) = spawn_hygiene_child();
            assert!(pids.iter().all(|p| pid_alive(*p)));
            if whole_group {
                child.signal_group(signal).unwrap();
            } else {
                child.signal(signal).unwrap();
            }
            let status = child.wait(Duration::from_secs(60)).unwrap();
            assert_eq!(
                status.signal(),
                Some(number),
                "child after SIG{signal}: {status:?}"
            );
            wait_dead(&pids).await;
            // The guardian also removed the run directory the dead test could not clean up.
            assert!(!run_dir.exists(), "{} was left behind", run_dir.display());
        }
    }

    /// A parent that fails before it signals its child (an assertion, a panic) drops the
    /// handle: that kills the child's process group, and with the child gone its guardians stop
    /// the agent it started, instead of the child holding it until its own timeout.
    #[tokio::test]
    async fn dropping_the_child_handle_kills_the_child_test() {
        let (child, mut pids, _) = spawn_hygiene_child();
        pids.push(child.pid());
        assert!(pids.iter().all(|p| pid_alive(*p)));
        drop(child);
        wait_dead(&pids).await;
    }
}
