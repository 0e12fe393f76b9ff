//! Process hygiene shared by the control plane and the agent harness.
//!
//! Every process a test starts lives in a [`ProcessGroup`]: a fresh Unix process group whose leader
//! is a small guardian shell (`controlplane/guardian.sh`). The guardian holds the read end of a
//! pipe whose write end only this test process has; when the test process disappears for any
//! reason (drop, panic, Ctrl-C, SIGTERM, SIGKILL) the kernel closes the pipe and the guardian kills
//! the whole group. On an orderly drop the harness stops its processes itself (SIGTERM, then
//! SIGKILL), reaps them, and checks that none of their PIDs is still alive.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, LazyLock, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// The guardian script, embedded so the harness works from any working directory.
const GUARDIAN_SCRIPT: &str = include_str!("../controlplane/guardian.sh");

/// Set to keep run directories (certificates, kubeconfigs, logs) after a test.
pub const KEEP_DIR_ENV: &str = "DCA_E2E_KEEP_DIR";

/// SIGTERM → SIGKILL grace the guardian gives when the test process died.
const GUARDIAN_GRACE_SECONDS: u32 = 3;

/// How long a process gets between SIGTERM and SIGKILL on an orderly stop.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// A process started into a [`ProcessGroup`].
#[derive(Debug)]
struct Member {
    name: String,
    child: Child,
    log_path: PathBuf,
    /// Set once the process has been waited for, so it is never reaped twice.
    status: Option<ExitStatus>,
}

/// A Unix process group owned by this test process; see the module docs.
#[derive(Debug)]
pub struct ProcessGroup {
    label: String,
    guardian: Child,
    /// Dropping this closes the guardian's stdin, which makes it kill the group.
    guardian_stdin: Option<ChildStdin>,
    pgid: u32,
    members: Vec<Member>,
    /// Every PID ever started here, checked for liveness on shutdown.
    started: Vec<(String, u32)>,
    shut_down: bool,
}

impl ProcessGroup {
    /// Starts the guardian and with it a new, empty process group. If the test process dies
    /// without cleaning up, the guardian removes `cleanup_dir` (unless `DCA_E2E_KEEP_DIR` is set).
    pub fn new(label: &str, cleanup_dir: Option<&Path>) -> Result<Self> {
        let mut command = Command::new("bash");
        command
            // Through the environment rather than argv, so `ps` shows a short command line.
            .env("DCA_E2E_GUARDIAN_SCRIPT", GUARDIAN_SCRIPT)
            .arg("-c")
            .arg("eval \"$DCA_E2E_GUARDIAN_SCRIPT\"")
            .arg(format!("guardian-{label}"))
            .arg(std::process::id().to_string())
            .arg(GUARDIAN_GRACE_SECONDS.to_string());
        if let Some(dir) = cleanup_dir
            && std::env::var_os(KEEP_DIR_ENV).is_none()
        {
            command.arg(dir);
        }
        let mut guardian = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // A group of its own: Ctrl-C on the terminal reaches only the test process, and the
            // guardian can signal exactly the processes started for this test.
            .process_group(0)
            .spawn()
            .context("starting the process-group guardian (bash)")?;
        let pgid = guardian.id();
        let guardian_stdin = guardian.stdin.take();
        // The guardian prints one line once it runs; until then the group might not exist yet
        // for `process_group(pgid)` to join.
        let stdout = guardian
            .stdout
            .take()
            .ok_or_else(|| anyhow!("guardian stdout was not captured"))?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the guardian's ready line")?;
        if !line.starts_with("guardian ready") {
            let _ = guardian.kill();
            let _ = guardian.wait();
            bail!("process-group guardian did not start (said {line:?})");
        }
        Ok(Self {
            label: label.to_owned(),
            guardian,
            guardian_stdin,
            pgid,
            members: Vec::new(),
            started: Vec::new(),
            shut_down: false,
        })
    }

    /// The process group id (the guardian's PID).
    pub fn pgid(&self) -> u32 {
        self.pgid
    }

    /// Starts `command` inside the group with stdin closed and stdout+stderr appended to `log_path`.
    /// Returns its PID.
    pub fn spawn(&mut self, name: &str, mut command: Command, log_path: &Path) -> Result<u32> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening log file {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("duplicating log file handle {}", log_path.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(
                i32::try_from(self.pgid).context("process group id does not fit in an i32")?,
            )
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        let pid = child.id();
        self.started.push((name.to_owned(), pid));
        self.members.push(Member {
            name: name.to_owned(),
            child,
            log_path: log_path.to_owned(),
            status: None,
        });
        Ok(pid)
    }

    /// PIDs of every process ever started in this group (guardian excluded).
    pub fn started_pids(&self) -> Vec<u32> {
        self.started.iter().map(|(_, pid)| *pid).collect()
    }

    /// The PID of the guardian, which is also the process group id.
    pub fn guardian_pid(&self) -> u32 {
        self.pgid
    }

    fn member_mut(&mut self, pid: u32) -> Result<&mut Member> {
        self.members
            .iter_mut()
            .find(|m| m.child.id() == pid)
            .ok_or_else(|| anyhow!("no process {pid} in group {}", self.label))
    }

    /// Whether the process has exited; reaps it if so.
    pub fn exit_status(&mut self, pid: u32) -> Result<Option<ExitStatus>> {
        let member = self.member_mut(pid)?;
        if member.status.is_none() {
            member.status = member
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", member.name))?;
        }
        Ok(member.status)
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self, pid: u32, grace: Duration) -> Result<ExitStatus> {
        let member = self.member_mut(pid)?;
        stop_member(member, grace)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self, pid: u32) -> Result<ExitStatus> {
        let member = self.member_mut(pid)?;
        stop_member(member, Duration::ZERO)
    }

    /// Forgets exited members so a long-lived group (an agent restarted many times) stays small.
    /// Their PIDs stay in the liveness check.
    pub fn forget_exited(&mut self) {
        self.members.retain(|m| m.status.is_none());
    }

    /// Stops every member (newest first, so dependents go before what they depend on), retires
    /// the guardian, and verifies that no PID started here is alive. Idempotent.
    pub fn shutdown(&mut self) -> Result<()> {
        if self.shut_down {
            return Ok(());
        }
        self.shut_down = true;
        let mut problems = Vec::new();
        for member in self.members.iter_mut().rev() {
            if let Err(err) = stop_member(member, DEFAULT_STOP_GRACE) {
                problems.push(format!("{}: {err:#}", member.name));
            }
        }
        // Whatever is left in the group (grandchildren of a member, the guardian itself) goes now.
        // Closing the guardian's stdin instead would make it wait out its grace period.
        self.guardian_stdin.take();
        if let Err(err) = signal_group(self.pgid, "KILL") {
            problems.push(format!("SIGKILL to group {}: {err:#}", self.pgid));
        }
        let _ = self.guardian.kill();
        let _ = self.guardian.wait();
        for (name, pid) in &self.started {
            if pid_alive(*pid) {
                problems.push(format!("{name} (pid {pid}) is still alive after shutdown"));
            }
        }
        if pid_alive(self.pgid) {
            problems.push(format!("guardian (pid {}) is still alive", self.pgid));
        }
        // Orphaned grandchildren are reparented away from us, so give the kernel a moment to
        // deliver the SIGKILL before calling them survivors.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut survivors = live_group_members(self.pgid);
        while !survivors.is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
            survivors = live_group_members(self.pgid);
        }
        if !survivors.is_empty() {
            problems.push(format!(
                "processes {survivors:?} of group {} survived",
                self.pgid
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "process group {} did not shut down cleanly: {}",
                self.label,
                problems.join("; ")
            ))
        }
    }

    /// Log files of the members, for diagnostics.
    pub fn log_paths(&self) -> Vec<(String, PathBuf)> {
        self.members
            .iter()
            .map(|m| (m.name.clone(), m.log_path.clone()))
            .collect()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            eprintln!("!!!!!!!! e2e harness: {err:#}");
            // A second panic while unwinding would abort and hide the first failure.
            if !thread::panicking() {
                panic!("{err:#}");
            }
        }
    }
}

fn stop_member(member: &mut Member, grace: Duration) -> Result<ExitStatus> {
    if let Some(status) = member.status {
        return Ok(status);
    }
    if let Some(status) = member.child.try_wait()? {
        member.status = Some(status);
        return Ok(status);
    }
    if !grace.is_zero() {
        send_signal(member.child.id(), "TERM")?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = member.child.try_wait()? {
                member.status = Some(status);
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "e2e harness: {} (pid {}) ignored SIGTERM for {grace:?}; sending SIGKILL",
            member.name,
            member.child.id()
        );
    }
    // `Child::kill` is SIGKILL; it errors only if the child was already reaped, which the
    // `status` bookkeeping rules out.
    member
        .child
        .kill()
        .with_context(|| format!("SIGKILL {}", member.name))?;
    let status = member
        .child
        .wait()
        .with_context(|| format!("reaping {}", member.name))?;
    member.status = Some(status);
    Ok(status)
}

/// Sends a signal by name (`TERM`, `KILL`, `INT`, …) through kill(1): the crate forbids unsafe
/// code, and the standard library can only send SIGKILL.
pub fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg("-s")
        .arg(signal)
        .arg("--")
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .context("running kill(1)")?;
    if status.success() || !pid_alive(pid) {
        Ok(())
    } else {
        bail!("kill -s {signal} {pid} failed: {status}")
    }
}

/// Sends a signal to every process of a process group.
pub fn signal_group(pgid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg("-s")
        .arg(signal)
        .arg("--")
        .arg(format!("-{pgid}"))
        .stderr(Stdio::null())
        .status()
        .context("running kill(1)")?;
    // kill(1) fails when the group is already empty, which is the outcome we want anyway.
    if status.success() || live_group_members(pgid).is_empty() {
        Ok(())
    } else {
        bail!("kill -s {signal} -{pgid} failed: {status}")
    }
}

/// Every PID in /proc (none if it cannot be read).
fn all_pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn live_group_members(pgid: u32) -> Vec<u32> {
    all_pids()
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After "(comm)": state, ppid, pgrp.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first().is_some_and(|s| *s != "Z" && *s != "X")
                && fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
        })
        .collect()
}

/// Whether `pid` names a live process. Zombies (exited, not yet reaped) count as dead.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name, which may itself
        // contain spaces and parentheses, hence the search from the right.
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// How an exit status reads in a log: "exit code 1" or "signal 9".
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

/// How much of a child test's output a failure message repeats.
const CHILD_OUTPUT_TAIL: usize = 64 * 1024;

/// This test binary run again as a child "test process" running one test (`--exact`), for tests
/// of what survives the end of a test process.
///
/// The child leads a process group of its own, as a shell makes a foreground job, so
/// [`ChildTest::signal_group`] delivers a signal the way Ctrl-C on a terminal does (the
/// harness's guardians each lead their own group and are not in it). Threads drain its stdout
/// and stderr, so it never blocks on a full pipe, and keep them for assertions; its stdin stays
/// open for [`ChildTest::send_line`], and closes when the handle drops.
///
/// Dropping the handle while the child still runs SIGKILLs the child's process group and reaps
/// it: a parent that fails before it signals the child does not leave it (and the control
/// plane it started) running for the rest of the test run.
pub struct ChildTest {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout_lines: mpsc::Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl std::fmt::Debug for ChildTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildTest")
            .field("pid", &self.child.id())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Copies `from` line by line into `into` (and into `lines` when given) until EOF.
fn drain_lines(
    from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut text) = into.lock() {
                text.push_str(&line);
                text.push('\n');
            }
            if let Some(lines) = &lines {
                // The receiver is gone once the handle dropped; the text is still kept.
                let _ = lines.send(line);
            }
        }
    })
}

fn text_tail(text: &Mutex<String>) -> String {
    let text = text.lock().map(|t| t.clone()).unwrap_or_default();
    let mut start = text.len().saturating_sub(CHILD_OUTPUT_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

impl ChildTest {
    /// Runs test `test` of this test binary in a child process with `envs` set on top of this
    /// process's environment.
    pub fn spawn(test: &str, envs: &[(&str, &str)]) -> Result<Self> {
        let exe = std::env::current_exe().context("locating this test binary")?;
        let mut child = Command::new(&exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("running {} --exact {test}", exe.display()))?;
        let stdin = child.stdin.take();
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the child test's stdout and stderr were not captured");
        };
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (lines_tx, stdout_lines) = mpsc::channel();
        let readers = vec![
            drain_lines(out, stdout.clone(), Some(lines_tx)),
            drain_lines(err, stderr.clone(), None),
        ];
        Ok(Self {
            child,
            stdin,
            stdout_lines,
            stdout,
            stderr,
            readers,
            status: None,
        })
    }

    /// The child's PID, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Blocks until the child prints a stdout line containing `marker` and returns what follows
    /// the marker on that line. (libtest prints `test <name> ... ` without a newline before the
    /// test's own output, so the marker need not start the line.)
    pub fn wait_for_line(&self, marker: &str, deadline: Duration) -> Result<String> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.stdout_lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some((_, rest)) = line.split_once(marker) {
                        return Ok(rest.to_owned());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "the child test printed no {marker:?} line within {deadline:?}; stderr:\n{}",
                    self.stderr()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "the child test closed its stdout without printing {marker:?}; stderr:\n{}",
                    self.stderr()
                ),
            }
        }
    }

    /// Writes one line to the child's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        use std::io::Write as _;
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("the child test's stdin is closed"))?;
        writeln!(stdin, "{line}").context("writing to the child test's stdin")?;
        stdin.flush().context("flushing the child test's stdin")
    }

    /// Sends `signal` to the child process alone.
    pub fn signal(&self, signal: &str) -> Result<()> {
        send_signal(self.child.id(), signal)
    }

    /// Sends `signal` to the child's whole process group, as a terminal sends Ctrl-C (SIGINT)
    /// to its foreground job.
    pub fn signal_group(&self, signal: &str) -> Result<()> {
        signal_group(self.child.id(), signal)
    }

    /// Waits up to `deadline` for the child to exit and reaps it.
    pub fn wait(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            self.status = self
                .child
                .try_wait()
                .context("waiting for the child test")?;
            if self.status.is_none() {
                if Instant::now() >= end {
                    bail!(
                        "the child test (pid {}) did not exit within {deadline:?}",
                        self.child.id()
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Waits up to `deadline` until both output pipes are closed, that is until the child and
    /// every process that inherited them (the harness's guardians inherit stderr) are gone, so
    /// that [`ChildTest::stdout`] and [`ChildTest::stderr`] are complete.
    pub fn wait_output_closed(&mut self, deadline: Duration) -> Result<()> {
        let end = Instant::now() + deadline;
        while !self.readers.iter().all(thread::JoinHandle::is_finished) {
            if Instant::now() >= end {
                bail!("the child test's output pipes were still open after {deadline:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        for reader in self.readers.drain(..) {
            reader
                .join()
                .map_err(|_| anyhow!("an output reader thread panicked"))?;
        }
        Ok(())
    }

    /// The child's stdout so far (its last 64 KiB).
    pub fn stdout(&self) -> String {
        text_tail(&self.stdout)
    }

    /// The child's stderr so far (its last 64 KiB).
    pub fn stderr(&self) -> String {
        text_tail(&self.stderr)
    }
}

impl Drop for ChildTest {
    fn drop(&mut self) {
        self.stdin.take();
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            // Not reaped yet, so the group id cannot have been reused.
            if let Err(err) = signal_group(self.child.id(), "KILL") {
                eprintln!("e2e harness: killing child test group: {err:#}");
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "===== child test (pid {}) stdout =====\n{}\n===== its stderr =====\n{}\n===== end of child test output =====",
                self.child.id(),
                self.stdout(),
                self.stderr()
            );
        }
    }
}

/// In a child test: blocks until the parent writes a line (returned without its newline) or
/// closes the pipe (`None`: the parent is gone, time to clean up and end).
pub fn read_parent_line() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_owned()),
    }
}

/// Ports handed out by [`free_port`] in this process, so two harness objects never get the same.
static HANDED_OUT: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// A TCP port on 127.0.0.1 that is free right now. Another process could still take it before
/// the caller binds it; callers retry start-up on "address already in use".
pub fn free_port() -> Result<u16> {
    for _ in 0..64 {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        drop(listener);
        let mut handed_out = HANDED_OUT
            .lock()
            .map_err(|_| anyhow!("port registry mutex poisoned"))?;
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    bail!("could not find a free port on 127.0.0.1")
}

/// A TCP socket in LISTEN state, from /proc/net/tcp{,6}.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListeningSocket {
    pub addr: SocketAddr,
    pub inode: u64,
}

/// `127.0.0.1:6443#123456`: how a child test process reports its sockets to its parent.
impl std::fmt::Display for ListeningSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.addr, self.inode)
    }
}

impl std::str::FromStr for ListeningSocket {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (addr, inode) = s
            .rsplit_once('#')
            .ok_or_else(|| anyhow!("{s:?} is not <address>#<inode>"))?;
        Ok(Self {
            addr: addr.parse().with_context(|| format!("address in {s:?}"))?,
            inode: inode.parse().with_context(|| format!("inode in {s:?}"))?,
        })
    }
}

/// Every TCP socket on this machine (in this network namespace) that is listening.
pub fn listening_sockets() -> Result<Vec<ListeningSocket>> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let text = match fs::read_to_string(file) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("reading {file}")),
        };
        out.extend(parse_proc_net_tcp(&text, v6));
    }
    Ok(out)
}

/// Parses the kernel's /proc/net/tcp table and keeps LISTEN rows (state 0A).
fn parse_proc_net_tcp(text: &str, v6: bool) -> Vec<ListeningSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&"0A") {
                return None;
            }
            let addr = parse_hex_socket_addr(fields.get(1)?, v6)?;
            let inode = fields.get(9)?.parse().ok()?;
            Some(ListeningSocket { addr, inode })
        })
        .collect()
}

/// `0100007F:1F90` → 127.0.0.1:8080. The kernel prints each 32-bit word of the address in host
/// byte order (little-endian here) and the port in big-endian hex.
fn parse_hex_socket_addr(text: &str, v6: bool) -> Option<SocketAddr> {
    let (ip_hex, port_hex) = text.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let mut words = Vec::new();
    for chunk in ip_hex.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        words.extend_from_slice(&word.to_le_bytes());
    }
    let ip = if v6 {
        let bytes: [u8; 16] = words.try_into().ok()?;
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        let bytes: [u8; 4] = words.try_into().ok()?;
        IpAddr::V4(Ipv4Addr::from(bytes))
    };
    Some(SocketAddr::new(ip, port))
}

/// The socket inodes among the open file descriptors of `pid` (empty once it has exited).
fn socket_inodes_of(pid: u32) -> Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    let fd_dir = format!("/proc/{pid}/fd");
    let entries = match fs::read_dir(&fd_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(inodes),
        Err(err) => return Err(err).with_context(|| format!("listing {fd_dir}")),
    };
    for entry in entries.flatten() {
        if let Ok(target) = fs::read_link(entry.path())
            && let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// The listening sockets that belong to `pid` (matched through its socket file descriptors),
/// with their inodes, which identify each socket for as long as any process holds it.
pub fn listeners_of(pid: u32) -> Result<Vec<ListeningSocket>> {
    let inodes = socket_inodes_of(pid)?;
    Ok(listening_sockets()?
        .into_iter()
        .filter(|s| inodes.contains(&s.inode))
        .collect())
}

/// The listening addresses of `pid`.
pub fn listening_sockets_of(pid: u32) -> Result<Vec<SocketAddr>> {
    Ok(listeners_of(pid)?.into_iter().map(|s| s.addr).collect())
}

/// Which of `sockets` are still listening: the same socket (same inode, same address), held
/// by whatever process. A new listener that another test opened on a freed port is a different
/// socket with a different inode and does not count.
pub fn still_listening(sockets: &[ListeningSocket]) -> Result<Vec<ListeningSocket>> {
    let now: HashSet<ListeningSocket> = listening_sockets()?.into_iter().collect();
    Ok(sockets
        .iter()
        .copied()
        .filter(|s| now.contains(s))
        .collect())
}

/// The live processes holding a file descriptor on socket `inode`, for failure messages.
pub fn socket_owners(inode: u64) -> Vec<u32> {
    all_pids()
        .filter(|pid| {
            socket_inodes_of(*pid)
                .map(|inodes| inodes.contains(&inode))
                .unwrap_or(false)
        })
        .collect()
}

/// The last `max_bytes` of a log file, for failure messages.
pub fn log_tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("<no log at {}>", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max_bytes);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return format!("<cannot read {}>", path.display());
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return format!("<cannot read {}>", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    if start > 0 {
        format!("…(first {start} bytes omitted)…\n{text}")
    } else {
        text.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_rows() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F91 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 100 0 0 10 0\n";
        let rows = parse_proc_net_tcp(v4, false);
        assert_eq!(
            rows,
            vec![ListeningSocket {
                addr: "127.0.0.1:8080".parse().unwrap(),
                inode: 4242
            }]
        );
        let v6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1\n";
        let rows = parse_proc_net_tcp(v6, true);
        assert_eq!(rows[0].addr, "[::1]:80".parse().unwrap());
        assert_eq!(rows[0].inode, 77);
    }

    #[test]
    fn group_members_die_on_drop_and_pids_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut group = ProcessGroup::new("unit", None).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let pid = group
            .spawn("sleep", cmd, &dir.path().join("sleep.log"))
            .unwrap();
        assert!(pid_alive(pid));
        assert!(pid_alive(group.guardian_pid()));
        let guardian = group.guardian_pid();
        drop(group);
        assert!(!pid_alive(pid));
        assert!(!pid_alive(guardian));
    }

    #[test]
    fn stop_escalates_to_sigkill_when_sigterm_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut group = ProcessGroup::new("stubborn", None).unwrap();
        let mut cmd = Command::new("bash");
        // Ignores SIGTERM; `exec` would lose the trap, so the loop stays in bash.
        cmd.args([
            "-c",
            "trap '' TERM; echo started; while true; do sleep 0.1; done",
        ]);
        let log = dir.path().join("stubborn.log");
        let pid = group.spawn("stubborn", cmd, &log).unwrap();
        // Wait until the trap is installed, or SIGTERM could land before it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("started")
        {
            assert!(Instant::now() < deadline, "stubborn never started");
            thread::sleep(Duration::from_millis(20));
        }
        let status = group.stop(pid, Duration::from_millis(300)).unwrap();
        assert_eq!(status.signal(), Some(9), "{}", describe_status(status));
        // bash's `sleep` children are in the group too; shutdown must leave nothing behind.
        group.shutdown().unwrap();
    }

    #[test]
    fn a_listener_is_identified_by_its_inode_not_its_port() {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = first.local_addr().unwrap();
        let mine = listeners_of(std::process::id()).unwrap();
        let old = *mine.iter().find(|s| s.addr == addr).unwrap();
        assert_eq!(old.to_string().parse::<ListeningSocket>().unwrap(), old);
        assert_eq!(still_listening(&[old]).unwrap(), vec![old]);
        assert_eq!(socket_owners(old.inode), vec![std::process::id()]);
        drop(first);
        // Someone else (here: us again) listens on the freed port: not a survivor of `old`.
        let second = TcpListener::bind(addr).unwrap();
        let new = *listening_sockets()
            .unwrap()
            .iter()
            .find(|s| s.addr == addr)
            .unwrap();
        assert_ne!(new.inode, old.inode);
        assert_eq!(still_listening(&[old]).unwrap(), Vec::new());
        assert_eq!(still_listening(&[new]).unwrap(), vec![new]);
        drop(second);
        assert_eq!(still_listening(&[new]).unwrap(), Vec::new());
    }

    #[test]
    fn free_ports_are_distinct() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b);
    }
}
