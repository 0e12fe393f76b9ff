//! Leader election among DCA replicas, wire-compatible with the Go DCA (dca-contract §5).
//!
//! We elect on the same lock object the Go agent uses (a ConfigMap with client-go's record
//! in an annotation, or a Lease) with client-go's algorithm and timing, so Go and Rust
//! replicas of one Deployment can share the lock during a rollout and never both lead.
//!
//! - [`spawn`] starts the election task and returns a [`LeaderHandle`] (cheap to clone: am
//!   I leader, a watch channel of it, a status snapshot) and an [`ElectionTask`] the app
//!   awaits: it resolves `Ok` only after shutdown (and the lock's release); an `Err` means
//!   the election died and the process must exit non-zero rather than limp on.
//! - [`identity`] gives the identity to elect with (the pod name).
//! - [`record`] is the pure record format and decision logic; `elector` the loop; `lock`
//!   the two lock objects.

mod elector;
mod identity;
mod lock;
pub mod record;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::Instrument;

use crate::config::{LeaderElectionSettings, LockResource, Settings};
use crate::error::Cause;

pub use elector::Timing;
pub use identity::identity;

/// Errors of the leader election subsystem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot determine our leader election identity: {0}")]
    Identity(String),
    #[error("invalid leader election settings: {0}")]
    Settings(String),
    /// Someone else wrote the lock since we read it (HTTP 409): we lost a race, nothing
    /// is broken.
    #[error("{lock} changed since we read it")]
    Conflict { lock: String },
    #[error("{lock}: Kubernetes API error: {cause}")]
    Api {
        lock: String,
        #[source]
        cause: Cause,
    },
    #[error(
        "{lock}: the leader election record cannot be read ({cause}); nobody can be elected \
         until it is fixed or removed"
    )]
    Record {
        lock: String,
        #[source]
        cause: Cause,
    },
    #[error("{lock}: written before being read (internal error)")]
    NotRead { lock: String },
    #[error("{lock}: no answer from the Kubernetes API within {after:?}")]
    Timeout { lock: String, after: Duration },
    #[error("the leader election task died: {0}")]
    TaskDied(String),
}

/// `Leader Election Status:` in the status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElectionState {
    /// The last attempt reached the lock.
    Running,
    /// The last attempt failed; see [`LeaderStatus::last_error`].
    Failing,
}

impl ElectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ElectionState::Running => "Running",
            ElectionState::Failing => "Failing",
        }
    }
}

impl std::fmt::Display for ElectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot for the status command, flares and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderStatus {
    /// `false` when `leader_election` is off (then we always lead).
    pub enabled: bool,
    /// Our identity in the election.
    pub identity: String,
    /// The lock object, e.g. `configmap datadog/datadog-leader-election`.
    pub lock: String,
    pub state: ElectionState,
    pub is_leader: bool,
    /// Holder of the last record we saw or wrote; empty when nobody holds the lock.
    pub leader: String,
    /// From the last record (the holder's clock).
    pub acquire_time: Option<Timestamp>,
    pub renew_time: Option<Timestamp>,
    /// `leaderTransitions` of the last record: how often the lock changed hands.
    pub leader_transitions: i64,
    /// Set while failing.
    pub last_error: Option<String>,
    /// Telemetry: times we became leader, stopped leading, and failed to reach the lock.
    pub acquisitions_total: u64,
    pub losses_total: u64,
    pub errors_total: u64,
}

impl LeaderStatus {
    fn new(enabled: bool, identity: &str, lock: String) -> Self {
        LeaderStatus {
            enabled,
            identity: identity.to_owned(),
            lock,
            state: ElectionState::Running,
            is_leader: !enabled,
            leader: if enabled {
                String::new()
            } else {
                identity.to_owned()
            },
            acquire_time: None,
            renew_time: None,
            leader_transitions: 0,
            last_error: None,
            acquisitions_total: 0,
            losses_total: 0,
            errors_total: 0,
        }
    }
}

type SharedStatus = Arc<Mutex<LeaderStatus>>;

fn lock_status(status: &SharedStatus) -> std::sync::MutexGuard<'_, LeaderStatus> {
    // The status is plain data rewritten whole by one task: a panic mid-update cannot leave
    // it in a state worse than slightly stale, so poisoning is ignored.
    status.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the rest of the agent sees of the election. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LeaderHandle {
    rx: watch::Receiver<bool>,
    status: SharedStatus,
    /// With election disabled nobody publishes; holding the sender keeps the channel open
    /// (a closed channel means the election died, see [`LeaderHandle::is_leader`]).
    _always: Option<Arc<watch::Sender<bool>>>,
}

impl LeaderHandle {
    /// A handle that leads forever: what `leader_election: false` means (a single
    /// replica), also handy for tests of leader-only subsystems.
    pub fn always_leader(identity: &str) -> Self {
        let (tx, rx) = watch::channel(true);
        LeaderHandle {
            rx,
            status: Arc::new(Mutex::new(LeaderStatus::new(
                false,
                identity,
                "none (leader election disabled)".to_owned(),
            ))),
            _always: Some(Arc::new(tx)),
        }
    }

    /// `true` while we lead. Leader-only work watches this: it turns `false` before the
    /// renew deadline passes without a renewal, on shutdown, and for good if the election
    /// task died (its sender is then gone).
    pub fn is_leader(&self) -> bool {
        self.rx.has_changed().is_ok() && *self.rx.borrow()
    }

    /// A receiver of the leader flag. `changed()` returning an error means the election
    /// task is gone: treat it as "not leader" (the app exits on it anyway).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// The current status.
    pub fn status(&self) -> LeaderStatus {
        let mut status = lock_status(&self.status).clone();
        status.is_leader = self.is_leader();
        status
    }
}

/// The election task, to be awaited by the app: `Ok(())` after shutdown, `Err` if the
/// election died (a panic), which must end the process with a non-zero status.
pub struct ElectionTask {
    inner: TaskInner,
}

enum TaskInner {
    Running(JoinHandle<Result<(), LeaderError>>),
    Disabled(Pin<Box<WaitForCancellationFutureOwned>>),
}

impl std::fmt::Debug for ElectionTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            TaskInner::Running(_) => "ElectionTask(running)",
            TaskInner::Disabled(_) => "ElectionTask(disabled)",
        })
    }
}

impl ElectionTask {
    /// Kills the election at once, without releasing the lock: what `kill -9` does to a
    /// replica. For tests; the app shuts down through the cancellation token.
    pub fn abort(&self) {
        if let TaskInner::Running(task) = &self.inner {
            task.abort();
        }
    }
}

impl Future for ElectionTask {
    type Output = Result<(), LeaderError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            TaskInner::Running(task) => Pin::new(task).poll(cx).map(|joined| match joined {
                Ok(result) => result,
                Err(e) if e.is_panic() => Err(LeaderError::TaskDied(format!("panicked: {e}"))),
                Err(_) => Err(LeaderError::TaskDied("aborted".to_owned())),
            }),
            TaskInner::Disabled(cancelled) => cancelled.as_mut().poll(cx).map(Ok),
        }
    }
}

/// Starts the election described by `settings.leader_election` on the lock in `namespace`
/// (see [`crate::k8s::resource_namespace`]).
pub fn spawn(
    client: kube::Client,
    settings: &Settings,
    namespace: &str,
    identity: String,
    shutdown: CancellationToken,
) -> Result<(LeaderHandle, ElectionTask), LeaderError> {
    spawn_with(
        client,
        &settings.leader_election,
        namespace,
        identity,
        shutdown,
    )
}

/// [`spawn`] with only the election's settings. With election disabled, nothing is
/// spawned: the handle leads forever and the task resolves when `shutdown` is cancelled.
pub fn spawn_with(
    client: kube::Client,
    settings: &LeaderElectionSettings,
    namespace: &str,
    identity: String,
    shutdown: CancellationToken,
) -> Result<(LeaderHandle, ElectionTask), LeaderError> {
    if !settings.enabled {
        let task = ElectionTask {
            inner: TaskInner::Disabled(Box::pin(shutdown.cancelled_owned())),
        };
        return Ok((LeaderHandle::always_leader(&identity), task));
    }
    if identity.trim().is_empty() {
        return Err(LeaderError::Identity("the identity is empty".to_owned()));
    }
    if settings.lease_name.trim().is_empty() {
        return Err(LeaderError::Settings(
            "leader_lease_name is empty".to_owned(),
        ));
    }
    let timing = Timing::from_lease(settings.lease_duration)?;
    let (tx, rx) = watch::channel(false);
    let run = |lock_name: String| {
        let status = Arc::new(Mutex::new(LeaderStatus::new(true, &identity, lock_name)));
        let handle = LeaderHandle {
            rx,
            status: status.clone(),
            _always: None,
        };
        (handle, status)
    };
    let span = tracing::info_span!("leader_election", identity = %identity);
    let release = settings.release_on_shutdown;
    let (handle, task) = match settings.resource {
        LockResource::ConfigMap => {
            let lock = lock::ConfigMapLock::new(client, namespace, &settings.lease_name);
            let (handle, status) = run(lock::Lock::describe(&lock));
            let elector = elector::Elector::new(lock, identity, timing, release, tx, status);
            (handle, tokio::spawn(elector.run(shutdown).instrument(span)))
        }
        LockResource::Lease => {
            let lock = lock::LeaseLock::new(client, namespace, &settings.lease_name);
            let (handle, status) = run(lock::Lock::describe(&lock));
            let elector = elector::Elector::new(lock, identity, timing, release, tx, status);
            (handle, tokio::spawn(elector.run(shutdown).instrument(span)))
        }
    };
    Ok((
        handle,
        ElectionTask {
            inner: TaskInner::Running(task),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disabled_election_always_leads_until_shutdown() {
        let shutdown = CancellationToken::new();
        let settings = LeaderElectionSettings {
            enabled: false,
            lease_duration: Duration::from_secs(60),
            lease_name: "datadog-leader-election".into(),
            resource: LockResource::ConfigMap,
            release_on_shutdown: true,
        };
        // No client is used when disabled; a client to nowhere proves it.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let (handle, task) = spawn_with(
            client,
            &settings,
            "default",
            "dca-0".into(),
            shutdown.clone(),
        )
        .unwrap();
        assert!(handle.is_leader());
        assert!(*handle.subscribe().borrow());
        let status = handle.status();
        assert!(!status.enabled);
        assert!(status.is_leader);
        assert_eq!(status.leader, "dca-0");
        let clone = handle.clone();
        shutdown.cancel();
        task.await.unwrap();
        assert!(clone.is_leader());
    }

    #[tokio::test]
    async fn invalid_inputs_are_refused() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let mut settings = LeaderElectionSettings {
            enabled: true,
            lease_duration: Duration::from_secs(60),
            lease_name: "datadog-leader-election".into(),
            resource: LockResource::Lease,
            release_on_shutdown: true,
        };
        let err = spawn_with(
            client.clone(),
            &settings,
            "default",
            " ".into(),
            CancellationToken::new(),
        )
        .unwrap_err();
        assert!(matches!(err, LeaderError::Identity(_)), "{err}");
        settings.lease_name = String::new();
        let err = spawn_with(
            client,
            &settings,
            "default",
            "dca-0".into(),
            CancellationToken::new(),
        )
        .unwrap_err();
        assert!(matches!(err, LeaderError::Settings(_)), "{err}");
    }

    #[test]
    fn state_strings_match_the_go_status_page() {
        assert_eq!(ElectionState::Running.to_string(), "Running");
        assert_eq!(ElectionState::Failing.to_string(), "Failing");
    }
}
