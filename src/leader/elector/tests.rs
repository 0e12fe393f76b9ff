//! The loop against an in-memory lock with resourceVersion semantics, on tokio's paused
//! clock: virtual time makes the timing properties exact and the tests fast.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::error::Cause;
use crate::leader::{LeaderHandle, LeaderStatus};

/// The apiserver's copy of the lock object.
#[derive(Debug, Default)]
struct Object {
    exists: bool,
    resource_version: u64,
    /// The annotation as stored (`None`: missing).
    raw: Option<String>,
    /// Pre-creation is forbidden (RBAC without `create`), counted.
    refuse_ensure: bool,
    ensure_calls: u32,
}

#[derive(Clone, Default)]
struct Server(Arc<Mutex<Object>>);

impl Server {
    fn record(&self) -> Option<LeaderElectionRecord> {
        let object = self.0.lock().unwrap();
        object
            .raw
            .as_deref()
            .map(|raw| LeaderElectionRecord::decode(raw).unwrap())
    }

    fn holder(&self) -> String {
        self.record().map(|r| r.holder_identity).unwrap_or_default()
    }

    /// What another client (a Go replica, kubectl) writing without our lock does.
    fn write_raw(&self, raw: &str) {
        let mut object = self.0.lock().unwrap();
        object.exists = true;
        object.resource_version += 1;
        object.raw = Some(raw.to_owned());
    }

    fn resource_version(&self) -> u64 {
        self.0.lock().unwrap().resource_version
    }
}

/// One replica's connection to the server; it can be cut or made to hang.
struct FakeLock {
    server: Server,
    /// resourceVersion of the object last read or written.
    seen: Option<u64>,
    down: Arc<AtomicBool>,
    hang: Arc<AtomicBool>,
}

impl FakeLock {
    fn new(server: &Server) -> (Self, Arc<AtomicBool>, Arc<AtomicBool>) {
        let down = Arc::new(AtomicBool::new(false));
        let hang = Arc::new(AtomicBool::new(false));
        let lock = FakeLock {
            server: server.clone(),
            seen: None,
            down: down.clone(),
            hang: hang.clone(),
        };
        (lock, down, hang)
    }

    async fn reachable(&self) -> Result<(), LeaderError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(LeaderError::Api {
                lock: "fake".into(),
                cause: Cause::msg("connection refused"),
            });
        }
        Ok(())
    }
}

impl Lock for FakeLock {
    async fn get(&mut self) -> Result<Option<ReadRecord>, LeaderError> {
        self.reachable().await?;
        let object = self.server.0.lock().unwrap();
        if !object.exists {
            self.seen = None;
            return Ok(None);
        }
        self.seen = Some(object.resource_version);
        let record = LeaderElectionRecord::from_annotation(object.raw.as_deref()).map_err(|e| {
            LeaderError::Record {
                lock: "fake".into(),
                cause: Cause::new(e),
            }
        })?;
        Ok(Some(ReadRecord {
            record,
            raw: object.raw.clone().unwrap_or_default(),
        }))
    }

    async fn create(&mut self, record: &LeaderElectionRecord) -> Result<(), LeaderError> {
        self.reachable().await?;
        let mut object = self.server.0.lock().unwrap();
        if object.exists {
            return Err(LeaderError::Conflict {
                lock: "fake".into(),
            });
        }
        object.exists = true;
        object.resource_version += 1;
        object.raw = Some(record.encode());
        self.seen = Some(object.resource_version);
        Ok(())
    }

    async fn update(&mut self, record: &LeaderElectionRecord) -> Result<(), LeaderError> {
        self.reachable().await?;
        let Some(seen) = self.seen else {
            return Err(LeaderError::NotRead {
                lock: "fake".into(),
            });
        };
        let mut object = self.server.0.lock().unwrap();
        if !object.exists || object.resource_version != seen {
            return Err(LeaderError::Conflict {
                lock: "fake".into(),
            });
        }
        object.resource_version += 1;
        object.raw = Some(record.encode());
        self.seen = Some(object.resource_version);
        Ok(())
    }

    async fn ensure_exists(&mut self) -> Result<(), LeaderError> {
        self.server.0.lock().unwrap().ensure_calls += 1;
        self.reachable().await?;
        let object = &mut *self.server.0.lock().unwrap();
        if object.refuse_ensure {
            return Err(LeaderError::Api {
                lock: "fake".into(),
                cause: Cause::msg("forbidden"),
            });
        }
        if !object.exists {
            object.exists = true;
            object.resource_version += 1;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "configmap test/datadog-leader-election".into()
    }
}

struct Replica {
    handle: LeaderHandle,
    task: tokio::task::JoinHandle<Result<(), LeaderError>>,
    shutdown: CancellationToken,
    down: Arc<AtomicBool>,
    hang: Arc<AtomicBool>,
}

const LEASE: Duration = Duration::from_secs(8);

fn start(server: &Server, identity: &str, release: bool) -> Replica {
    let (lock, down, hang) = FakeLock::new(server);
    let (tx, rx) = watch::channel(false);
    let status = Arc::new(Mutex::new(LeaderStatus::new(
        true,
        identity,
        lock.describe(),
    )));
    let handle = LeaderHandle {
        rx,
        status: status.clone(),
        _always: None,
    };
    let timing = Timing::from_lease(LEASE).unwrap();
    let elector = Elector::new(lock, identity.to_owned(), timing, release, tx, status);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(elector.run(shutdown.clone()));
    Replica {
        handle,
        task,
        shutdown,
        down,
        hang,
    }
}

/// Steps virtual time by `step` until `cond` holds, asserting `invariant` at every step.
async fn until(
    what: &str,
    limit: Duration,
    mut invariant: impl FnMut(),
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let step = Duration::from_millis(50);
    let begin = Instant::now();
    loop {
        invariant();
        if cond() {
            return begin.elapsed();
        }
        assert!(begin.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(step).await;
    }
}

fn leaders(replicas: &[&Replica]) -> usize {
    replicas.iter().filter(|r| r.handle.is_leader()).count()
}

#[test]
fn timing_follows_the_go_dca() {
    let t = Timing::from_lease(Duration::from_secs(60)).unwrap();
    assert_eq!(t.renew_deadline, Duration::from_secs(30));
    assert_eq!(t.retry_period, Duration::from_secs(15));
    assert!(Timing::from_lease(Duration::from_millis(999)).is_err());
}

#[tokio::test(start_paused = true)]
async fn single_replica_leads_renews_and_releases() {
    let server = Server::default();
    let a = start(&server, "dca-a", true);
    until("a leads", LEASE, || {}, || a.handle.is_leader()).await;
    let first = server.record().unwrap();
    assert_eq!(first.holder_identity, "dca-a");
    assert_eq!(first.lease_duration_seconds, 8);
    // ensure_exists pre-created the object without a record, as the Go DCA does, so the
    // first acquisition counts as a transition.
    assert_eq!(first.leader_transitions, 1);

    // Renewals keep the record moving, with the same acquireTime.
    let rv = server.resource_version();
    tokio::time::sleep(LEASE * 2).await;
    assert!(a.handle.is_leader());
    assert!(server.resource_version() >= rv + 6, "too few renewals");
    let renewed = server.record().unwrap();
    assert_eq!(renewed.acquire_time, first.acquire_time);
    assert!(renewed.renew_time > first.renew_time);
    assert_eq!(renewed.leader_transitions, 1);

    let status = a.handle.status();
    assert!(status.is_leader);
    assert_eq!(status.leader, "dca-a");
    assert_eq!(status.state, ElectionState::Running);
    assert_eq!(status.acquisitions_total, 1);
    assert_eq!(status.leader_transitions, 1);

    // Shutdown: step down, then client-go's release record.
    let mut rx = a.handle.subscribe();
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
    assert!(!*rx.borrow_and_update());
    let released = server.record().unwrap();
    assert_eq!(released.holder_identity, "");
    assert_eq!(released.lease_duration_seconds, 1);
    assert_eq!(released.leader_transitions, 1);
    assert_eq!(released.acquire_time, released.renew_time);
    assert!(!a.handle.is_leader());
}

#[tokio::test(start_paused = true)]
async fn two_replicas_never_lead_together_and_handover_on_release() {
    let server = Server::default();
    let a = start(&server, "dca-a", true);
    let b = start(&server, "dca-b", true);
    let both = || assert!(leaders(&[&a, &b]) <= 1, "two leaders");
    until("someone leads", LEASE, both, || leaders(&[&a, &b]) == 1).await;
    // A long stretch of renewals and polls: one leader throughout, and it is the holder.
    let first = if a.handle.is_leader() {
        "dca-a"
    } else {
        "dca-b"
    };
    for _ in 0..200 {
        both();
        assert_eq!(leaders(&[&a, &b]), 1);
        assert_eq!(server.holder(), first);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (leader, follower) = if first == "dca-a" { (a, b) } else { (b, a) };
    assert_eq!(follower.handle.status().leader, first);

    // Graceful shutdown with release: the follower takes over well before a lease.
    leader.shutdown.cancel();
    leader.task.await.unwrap().unwrap();
    let took = until(
        "follower leads after release",
        LEASE * 2,
        || {},
        || follower.handle.is_leader(),
    )
    .await;
    assert!(took < LEASE, "takeover after release took {took:?}");
    let record = server.record().unwrap();
    assert_ne!(record.holder_identity, first);
    assert_eq!(record.leader_transitions, 2);
}

#[tokio::test(start_paused = true)]
async fn killed_leader_is_replaced_only_after_the_lease() {
    let server = Server::default();
    let a = start(&server, "dca-a", true);
    until("a leads", LEASE, || {}, || a.handle.is_leader()).await;
    let b = start(&server, "dca-b", true);
    tokio::time::sleep(LEASE).await;
    assert!(!b.handle.is_leader());

    // kill -9: no release. The record stays as the leader last wrote it.
    a.task.abort();
    let killed_at = Instant::now();
    assert!(a.task.await.unwrap_err().is_cancelled());
    assert!(
        !a.handle.is_leader(),
        "a dead election must not report leading"
    );
    let last_renewal = server.resource_version();
    let took = until("b takes over", LEASE * 4, || {}, || b.handle.is_leader()).await;
    // B waited for the record to stay unchanged for a whole lease on its own clock.
    assert!(took >= LEASE - a_retry(), "took over after {took:?}");
    assert!(killed_at.elapsed() <= LEASE * 3);
    assert!(server.resource_version() > last_renewal);
    assert_eq!(server.holder(), "dca-b");
}

fn a_retry() -> Duration {
    Timing::from_lease(LEASE).unwrap().retry_period
}

#[tokio::test(start_paused = true)]
async fn cut_off_leader_steps_down_before_anyone_can_take_over() {
    let server = Server::default();
    let a = start(&server, "dca-a", true);
    until("a leads", LEASE, || {}, || a.handle.is_leader()).await;
    let b = start(&server, "dca-b", true);
    tokio::time::sleep(LEASE).await;

    // A loses the apiserver; B still reaches it.
    a.down.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let both = || assert!(leaders(&[&a, &b]) <= 1, "two leaders");
    until("a steps down", LEASE, both, || !a.handle.is_leader()).await;
    // Lease 8 s: renew deadline 4 s, retry 2 s, so at most 6 s after the last renewal.
    assert!(cut_at.elapsed() <= Duration::from_secs(6));
    until("b takes over", LEASE * 3, both, || b.handle.is_leader()).await;
    let status = a.handle.status();
    assert_eq!(status.state, ElectionState::Failing);
    assert!(status.last_error.unwrap().contains("connection refused"));
    assert!(status.errors_total >= 1);
    assert_eq!(status.losses_total, 1);

    // A comes back as a follower of B, and the status recovers.
    a.down.store(false, Ordering::SeqCst);
    until("a sees b", LEASE * 4, both, || {
        a.handle.status().leader == "dca-b" && a.handle.status().state == ElectionState::Running
    })
    .await;
    assert!(!a.handle.is_leader());
    assert!(a.handle.status().last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn hung_apiserver_cannot_keep_a_leader_past_the_deadline() {
    let server = Server::default();
    let a = start(&server, "dca-a", true);
    until("a leads", LEASE, || {}, || a.handle.is_leader()).await;
    a.hang.store(true, Ordering::SeqCst);
    let hung_at = Instant::now();
    until("a steps down", LEASE, || {}, || !a.handle.is_leader()).await;
    // At the deadline (6 s after the last renewal at the latest), seen at the next step.
    assert!(hung_at.elapsed() <= Duration::from_millis(6_050));
    assert!(
        a.handle
            .status()
            .last_error
            .unwrap()
            .contains("no answer from the Kubernetes API")
    );
    // Shutdown while hung still finishes (the release is bounded).
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn foreign_holder_renewing_keeps_us_following_whatever_its_clock_says() {
    let server = Server::default();
    // A Go replica whose clock is 25 years behind, renewing every 2 s.
    let foreign = |renew: u32| {
        format!(
            r#"{{"holderIdentity":"go-dca","leaseDurationSeconds":8,"acquireTime":"2000-01-01T00:00:00Z","renewTime":"2000-01-01T00:00:{:02}Z","leaderTransitions":3,"strategy":"","preferredHolder":""}}"#,
            renew % 60
        )
    };
    server.write_raw(&foreign(0));
    let a = start(&server, "dca-a", true);
    let b = start(&server, "dca-b", true);
    let nobody = || assert_eq!(leaders(&[&a, &b]), 0, "took a live foreign lock");
    for i in 1..=30 {
        for _ in 0..20 {
            nobody();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server.write_raw(&foreign(i * 2));
    }
    assert_eq!(a.handle.status().leader, "go-dca");
    assert_eq!(b.handle.status().leader_transitions, 3);

    // The Go replica dies: one of ours takes over after a lease of silence.
    let both = || assert!(leaders(&[&a, &b]) <= 1, "two leaders");
    until("one of ours leads", LEASE * 3, both, || {
        leaders(&[&a, &b]) == 1
    })
    .await;
    let record = server.record().unwrap();
    assert!(record.holder_identity.starts_with("dca-"));
    assert_eq!(record.leader_transitions, 4);
}

#[tokio::test(start_paused = true)]
async fn takeover_by_someone_else_makes_the_leader_step_down() {
    let server = Server::default();
    let a = start(&server, "dca-a", false);
    until("a leads", LEASE, || {}, || a.handle.is_leader()).await;
    // An operator (or a misconfigured replica) forces the lock to another holder.
    server.write_raw(
        r#"{"holderIdentity":"intruder","leaseDurationSeconds":8,"acquireTime":"2025-01-01T00:00:00Z","renewTime":"2025-01-01T00:00:00Z","leaderTransitions":9}"#,
    );
    until("a steps down", LEASE, || {}, || !a.handle.is_leader()).await;
    assert_eq!(a.handle.status().leader, "intruder");
    // Without release on shutdown, a follower leaves the record alone.
    let rv = server.resource_version();
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
    assert_eq!(server.resource_version(), rv);
}

#[tokio::test(start_paused = true)]
async fn no_release_when_disabled() {
    let server = Server::default();
    let a = start(&server, "dca-a", false);
    until("a leads", LEASE, || {}, || a.handle.is_leader()).await;
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
    assert_eq!(server.holder(), "dca-a");
    assert!(!a.handle.is_leader());
}

#[tokio::test(start_paused = true)]
async fn release_rereads_when_its_last_write_is_stale() {
    let server = Server::default();
    let a = start(&server, "dca-a", true);
    until("a leads", LEASE, || {}, || a.handle.is_leader()).await;
    // Someone touches the object without changing the record (e.g. another annotation):
    // our cached resourceVersion is stale, the lock is still ours.
    let raw = server.0.lock().unwrap().raw.clone().unwrap();
    server.write_raw(&raw);
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
    assert_eq!(server.holder(), "");
    assert_eq!(server.record().unwrap().lease_duration_seconds, 1);
}

#[tokio::test(start_paused = true)]
async fn garbage_record_blocks_election_and_says_so() {
    let server = Server::default();
    server.write_raw("not json");
    let a = start(&server, "dca-a", true);
    until(
        "a reports failing",
        LEASE,
        || assert!(!a.handle.is_leader()),
        || a.handle.status().state == ElectionState::Failing,
    )
    .await;
    let error = a.handle.status().last_error.unwrap();
    assert!(error.contains("cannot be read"), "{error}");
    tokio::time::sleep(LEASE * 3).await;
    assert!(!a.handle.is_leader());
    // Fixing the object (here: removing the annotation) lets the election proceed.
    server.0.lock().unwrap().raw = None;
    until("a leads", LEASE * 4, || {}, || a.handle.is_leader()).await;
}

#[tokio::test(start_paused = true)]
async fn missing_object_is_created() {
    let server = Server::default();
    let (lock, _, _) = FakeLock::new(&server);
    let (tx, _rx) = watch::channel(false);
    let status = Arc::new(Mutex::new(LeaderStatus::new(
        true,
        "dca-a",
        lock.describe(),
    )));
    let mut elector = Elector::new(
        lock,
        "dca-a".into(),
        Timing::from_lease(LEASE).unwrap(),
        true,
        tx,
        status,
    );
    // Skip the pre-creation: the object is created with the record, transitions 0.
    elector.ensured = true;
    assert!(matches!(
        elector.try_acquire_or_renew().await,
        Attempt::Leading
    ));
    let record = server.record().unwrap();
    assert_eq!(record.holder_identity, "dca-a");
    assert_eq!(record.leader_transitions, 0);
    // Renewal through the fast path.
    assert!(matches!(
        elector.try_acquire_or_renew().await,
        Attempt::Leading
    ));
    assert_eq!(server.resource_version(), 2);
}

#[test]
fn warnings_are_rate_limited() {
    let mut failures = Failures::default();
    let err = LeaderError::Api {
        lock: "l".into(),
        cause: Cause::msg("boom"),
    };
    failures.failed("l", &err);
    let first = failures.last_warned;
    assert!(first.is_some());
    failures.failed("l", &err);
    assert_eq!(failures.last_warned, first, "same error repeated at once");
    assert_eq!(failures.streak, 2);
    failures.succeeded("l");
    assert_eq!(failures.streak, 0);
    assert!(failures.last_warned.is_none());
}

#[tokio::test(start_paused = true)]
async fn refused_pre_creation_does_not_stop_the_election() {
    let server = Server::default();
    server.0.lock().unwrap().refuse_ensure = true;
    let a = start(&server, "dca-a", true);
    a.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(LEASE).await;
    // During an outage the pre-creation is tried again with every attempt.
    let during_outage = server.0.lock().unwrap().ensure_calls;
    assert!(during_outage >= 2, "{during_outage} tries");
    a.down.store(false, Ordering::SeqCst);
    until("a leads", LEASE * 4, || {}, || a.handle.is_leader()).await;
    // The lock was created with the record; the refusal while the apiserver answered was
    // final, so there are no more tries.
    assert_eq!(server.record().unwrap().leader_transitions, 0);
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(server.0.lock().unwrap().ensure_calls, during_outage + 1);
    assert_eq!(a.handle.status().state, ElectionState::Running);
}
