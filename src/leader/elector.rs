//! The election loop, with client-go's `LeaderElector` semantics (which the Go DCA runs):
//!
//! - a candidate tries every retry period (jittered) to acquire the lock; a lock held by
//!   someone else is respected until it has stayed unchanged for its lease duration on OUR
//!   clock (see [`record::decide`]), so clock skew between replicas does not matter;
//! - the leader renews every retry period; if a renewal cycle finds no success within the
//!   renew deadline it steps down (publishes `false`) at that deadline, which comes before
//!   any follower can take over;
//! - every write replaces the object read, guarded by its resourceVersion;
//! - on shutdown the leader steps down first, then releases the lock (empty holder, 1 s
//!   lease) so another replica takes over at once.
//!
//! Times used for expiry come from a monotonic clock, so a wall-clock step can neither make
//! us take a live lock nor keep us leading past the deadline.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::lock::{Lock, ReadRecord};
use super::record::{self, Decision, LeaderElectionRecord, Observation};
use super::{ElectionState, LeaderError, SharedStatus, lock_status};

/// How often to repeat the same failure at warn level while it persists.
const REPEAT_WARNING_EVERY: Duration = Duration::from_secs(300);
/// Upper bound for releasing the lock at shutdown, so a dead apiserver cannot hold up the
/// pod's termination.
const MAX_RELEASE_WAIT: Duration = Duration::from_secs(10);
/// client-go's acquire loop sleeps `retry * (1 + rand * 1.2)`.
const JITTER_FACTOR: f64 = 1.2;

/// Election timing, derived from `leader_lease_duration` as the Go DCA does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a holder's lock is respected after its last observed change.
    pub lease: Duration,
    /// A leader that cannot renew within this steps down (lease / 2).
    pub renew_deadline: Duration,
    /// Interval between attempts (lease / 4).
    pub retry_period: Duration,
}

impl Timing {
    pub fn from_lease(lease: Duration) -> Result<Timing, LeaderError> {
        // The record carries whole seconds; under 1 s it would announce a 0 s lease, which
        // every other replica reads as already expired.
        if lease < Duration::from_secs(1) {
            return Err(LeaderError::Settings(format!(
                "leader_lease_duration {lease:?} is shorter than one second"
            )));
        }
        Ok(Timing {
            lease,
            renew_deadline: lease / 2,
            retry_period: lease / 4,
        })
    }

    fn lease_signed(&self) -> SignedDuration {
        SignedDuration::try_from(self.lease).unwrap_or(SignedDuration::MAX)
    }
}

/// Wall time at start, advanced by the monotonic clock (tokio's, so tests can pause it).
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall: Timestamp,
    mono: Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            wall: Timestamp::now(),
            mono: Instant::now(),
        }
    }

    fn now(&self) -> Timestamp {
        let elapsed = SignedDuration::try_from(self.mono.elapsed()).unwrap_or(SignedDuration::MAX);
        self.wall.checked_add(elapsed).unwrap_or(Timestamp::MAX)
    }
}

/// Outcome of one `try_acquire_or_renew`.
#[derive(Debug)]
enum Attempt {
    /// We hold the lock (we just wrote it).
    Leading,
    /// Someone else holds a lease that has not expired.
    Following {
        leader: String,
    },
    /// Someone wrote the lock between our read and our write.
    Conflict,
    Failed(LeaderError),
}

/// How the leader phase ended.
enum Led {
    SteppedDown,
    Cancelled,
}

/// Rate-limits warnings while the lock cannot be reached.
#[derive(Debug, Default)]
struct Failures {
    streak: u32,
    last_message: String,
    last_warned: Option<Instant>,
}

impl Failures {
    fn failed(&mut self, lock: &str, err: &LeaderError) {
        self.streak = self.streak.saturating_add(1);
        let message = err.to_string();
        let repeat_due = self
            .last_warned
            .is_none_or(|at| at.elapsed() >= REPEAT_WARNING_EVERY);
        if self.streak == 1 || message != self.last_message || repeat_due {
            warn!(%lock, error = %message, failed_attempts = self.streak, "leader election cannot use its lock; retrying");
            self.last_warned = Some(Instant::now());
        }
        self.last_message = message;
    }

    fn succeeded(&mut self, lock: &str) {
        if self.streak > 0 {
            info!(%lock, failed_attempts = self.streak, "leader election reaches its lock again");
        }
        self.streak = 0;
        self.last_warned = None;
    }
}

pub(crate) struct Elector<L> {
    lock: L,
    describe: String,
    identity: String,
    timing: Timing,
    clock: Clock,
    release_on_cancel: bool,
    /// The raw record last seen and when it was first seen (client-go's observedRawRecord
    /// and observedTime).
    observation: Option<Observation>,
    /// The record last read or written (client-go's observedRecord).
    observed: Option<LeaderElectionRecord>,
    /// The holder last logged, to log each change once.
    reported_leader: Option<String>,
    /// The Go DCA's pre-created objects exist, or creating them was refused while the
    /// apiserver answered (then retrying is pointless).
    ensured: bool,
    failures: Failures,
    tx: watch::Sender<bool>,
    status: SharedStatus,
}

impl<L: Lock> Elector<L> {
    pub(super) fn new(
        lock: L,
        identity: String,
        timing: Timing,
        release_on_cancel: bool,
        tx: watch::Sender<bool>,
        status: SharedStatus,
    ) -> Self {
        Elector {
            describe: lock.describe(),
            lock,
            identity,
            timing,
            clock: Clock::new(),
            release_on_cancel,
            observation: None,
            observed: None,
            reported_leader: None,
            ensured: false,
            failures: Failures::default(),
            tx,
            status,
        }
    }

    /// Runs until `shutdown` is cancelled. Only returns `Ok`: API failures are retried
    /// forever (and shown in the status), as a replica that cannot reach the apiserver
    /// still serves what it has.
    pub(super) async fn run(mut self, shutdown: CancellationToken) -> Result<(), LeaderError> {
        info!(
            lock = %self.describe,
            lease = ?self.timing.lease,
            renew_deadline = ?self.timing.renew_deadline,
            retry_period = ?self.timing.retry_period,
            "leader election started"
        );
        loop {
            let Some(elected_at) = self.campaign(&shutdown).await else {
                break;
            };
            match self.lead(elected_at, &shutdown).await {
                Led::SteppedDown => continue,
                Led::Cancelled => break,
            }
        }
        self.shut_down().await;
        Ok(())
    }

    /// Tries until we lead (returns when that attempt started) or shutdown (`None`).
    async fn campaign(&mut self, shutdown: &CancellationToken) -> Option<Instant> {
        loop {
            let started = Instant::now();
            let attempt = tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                a = self.bounded_attempt(started + self.timing.renew_deadline) => a,
            };
            let pause = match attempt {
                Attempt::Leading => return Some(started),
                Attempt::Following { .. } | Attempt::Conflict => {
                    self.jittered(self.timing.retry_period)
                }
                Attempt::Failed(err) => {
                    self.record_failure(&err);
                    self.backoff()
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Leads until a renewal cycle misses the renew deadline, someone else takes the lock,
    /// or shutdown.
    async fn lead(&mut self, elected_at: Instant, shutdown: &CancellationToken) -> Led {
        self.set_leader(true, "acquired the lock");
        let (retry, deadline_after) = (self.timing.retry_period, self.timing.renew_deadline);
        let mut last_ok = elected_at;
        let mut last_end = Instant::now();
        'cycle: loop {
            // The last successful write started at `last_ok`; followers saw it no earlier,
            // and respect it for a full lease. Stepping down at `last_ok + retry + renew
            // deadline` (3/4 of the lease) keeps us clear of any takeover.
            let deadline = last_ok + retry + deadline_after;
            let mut next = last_end + retry;
            loop {
                if next >= deadline {
                    self.step_down("could not renew the lock within the renew deadline");
                    return Led::SteppedDown;
                }
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Led::Cancelled,
                    () = tokio::time::sleep_until(next) => {}
                }
                let started = Instant::now();
                let attempt = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Led::Cancelled,
                    a = self.bounded_attempt(deadline) => a,
                };
                match attempt {
                    Attempt::Leading => {
                        last_ok = started;
                        last_end = Instant::now();
                        continue 'cycle;
                    }
                    Attempt::Following { leader } => {
                        self.step_down(&format!("{leader} holds the lock"));
                        return Led::SteppedDown;
                    }
                    // Another write slipped in (someone touched the object); re-read and
                    // retry within the deadline: a real takeover shows up as Following.
                    Attempt::Conflict => next = started + retry,
                    Attempt::Failed(err @ LeaderError::Timeout { .. }) => {
                        self.record_failure(&err);
                        self.step_down("could not renew the lock within the renew deadline");
                        return Led::SteppedDown;
                    }
                    Attempt::Failed(err) => {
                        self.record_failure(&err);
                        next = started + retry;
                    }
                }
            }
        }
    }

    /// One attempt, cut at `deadline` (a hung request must not outlive the deadline).
    async fn bounded_attempt(&mut self, deadline: Instant) -> Attempt {
        let budget = deadline.saturating_duration_since(Instant::now());
        let attempt = match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
            Ok(attempt) => attempt,
            Err(_) => Attempt::Failed(LeaderError::Timeout {
                lock: self.describe.clone(),
                after: budget,
            }),
        };
        if !matches!(attempt, Attempt::Failed(_)) {
            self.failures.succeeded(&self.describe);
            let mut status = lock_status(&self.status);
            status.state = ElectionState::Running;
            status.last_error = None;
        }
        attempt
    }

    /// client-go `tryAcquireOrRenew`.
    async fn try_acquire_or_renew(&mut self) -> Attempt {
        // Best effort: e.g. a missing permission to create the companion ConfigMap must not
        // stop the election on the Lease; the lock itself is created below if needed.
        let mut ensure_failed = None;
        if !self.ensured {
            match self.lock.ensure_exists().await {
                Ok(()) => self.ensured = true,
                Err(err) => ensure_failed = Some(err),
            }
        }

        // Fast path: while our lease is valid, renew the object we last wrote without
        // reading it first; a 409 sends us to the slow path.
        let now = self.clock.now();
        if let Some(record) = self.optimistic_renewal(now) {
            match self.lock.update(&record).await {
                Ok(()) => {
                    self.wrote(record, now);
                    return Attempt::Leading;
                }
                Err(err) => debug!(error = %err, "optimistic renewal failed; re-reading the lock"),
            }
        }

        let read = match self.lock.get().await {
            Ok(read) => read,
            // An outage: try the pre-creation again next time.
            Err(err) => return Attempt::Failed(err),
        };
        if let Some(err) = ensure_failed {
            // The apiserver answers, so the pre-creation was refused for good: say it once.
            warn!(lock = %self.describe, error = %err, "cannot create the leader election objects in advance; electing anyway");
            self.ensured = true;
        }
        // Observed when the answer arrived: later is the cautious side for expiry.
        let now = self.clock.now();
        let Some(ReadRecord {
            record: current,
            raw,
        }) = read
        else {
            let Decision::Acquire { record } =
                record::decide(None, now, &self.identity, now, self.timing.lease_signed())
            else {
                // decide() always acquires a lock that does not exist.
                return Attempt::Conflict;
            };
            return match self.lock.create(&record).await {
                Ok(()) => {
                    self.wrote(record, now);
                    Attempt::Leading
                }
                Err(LeaderError::Conflict { .. }) => Attempt::Conflict,
                Err(err) => Attempt::Failed(err),
            };
        };

        let observation = record::observe(self.observation.as_ref(), &raw, now);
        let observed_at = observation.observed_at;
        self.observation = Some(observation);
        self.saw(current.clone());

        match record::decide(
            Some(&current),
            observed_at,
            &self.identity,
            now,
            self.timing.lease_signed(),
        ) {
            Decision::Wait { leader, .. } => Attempt::Following { leader },
            Decision::Acquire { record } | Decision::Renew { record } => {
                match self.lock.update(&record).await {
                    Ok(()) => {
                        self.wrote(record, now);
                        Attempt::Leading
                    }
                    Err(LeaderError::Conflict { .. }) => Attempt::Conflict,
                    Err(err) => Attempt::Failed(err),
                }
            }
        }
    }

    /// The renewal record for the fast path, when our own lease is still valid.
    fn optimistic_renewal(&self, now: Timestamp) -> Option<LeaderElectionRecord> {
        let observed = self.observed.as_ref()?;
        let observation = self.observation.as_ref()?;
        if !observed.is_held_by(&self.identity) {
            return None;
        }
        let expires = observation
            .observed_at
            .checked_add(SignedDuration::from_secs(observed.lease_duration_seconds))
            .unwrap_or(Timestamp::MAX);
        (expires > now).then(|| LeaderElectionRecord {
            holder_identity: self.identity.clone(),
            lease_duration_seconds: self.timing.lease_signed().as_secs(),
            acquire_time: observed.acquire_time,
            renew_time: Some(now),
            leader_transitions: observed.leader_transitions,
        })
    }

    /// After a successful write: what we wrote is what everyone now reads.
    fn wrote(&mut self, record: LeaderElectionRecord, now: Timestamp) {
        self.observation = Some(Observation {
            raw: record.encode(),
            observed_at: now,
        });
        self.saw(record);
    }

    /// Keeps `record` as the last seen, logs a new holder once, and updates the status.
    fn saw(&mut self, record: LeaderElectionRecord) {
        if self.reported_leader.as_deref() != Some(record.holder_identity.as_str()) {
            let holder = &record.holder_identity;
            if holder.is_empty() {
                info!(lock = %self.describe, "the lock is free (released or never taken)");
            } else if *holder != self.identity {
                info!(lock = %self.describe, leader = %holder, "new leader is {holder}");
            }
            self.reported_leader = Some(holder.clone());
        }
        {
            let mut status = lock_status(&self.status);
            status.leader = record.holder_identity.clone();
            status.acquire_time = record.acquire_time;
            status.renew_time = record.renew_time;
            status.leader_transitions = record.leader_transitions;
        }
        self.observed = Some(record);
    }

    fn record_failure(&mut self, err: &LeaderError) {
        self.failures.failed(&self.describe, err);
        let mut status = lock_status(&self.status);
        status.state = ElectionState::Failing;
        status.last_error = Some(err.to_string());
        status.errors_total = status.errors_total.saturating_add(1);
    }

    fn set_leader(&mut self, leading: bool, why: &str) {
        let was = self.tx.send_replace(leading);
        if was == leading {
            return;
        }
        let mut status = lock_status(&self.status);
        status.is_leader = leading;
        if leading {
            status.acquisitions_total = status.acquisitions_total.saturating_add(1);
            info!(lock = %self.describe, identity = %self.identity, reason = why, "became leader");
        } else {
            status.losses_total = status.losses_total.saturating_add(1);
            info!(lock = %self.describe, identity = %self.identity, reason = why, "stopped leading");
        }
    }

    fn step_down(&mut self, why: &str) {
        self.set_leader(false, why);
    }

    /// Steps down, then gives the lock up so another replica need not wait for the lease.
    async fn shut_down(&mut self) {
        // Leader-only work must stop before anyone else can start it.
        self.set_leader(false, "shutting down");
        let held = self
            .observed
            .as_ref()
            .is_some_and(|r| r.is_held_by(&self.identity));
        if !self.release_on_cancel || !held {
            info!(lock = %self.describe, "leader election stopped");
            return;
        }
        let limit = self.timing.renew_deadline.min(MAX_RELEASE_WAIT);
        match tokio::time::timeout(limit, self.release()).await {
            Ok(Ok(true)) => info!(lock = %self.describe, "released the lock"),
            Ok(Ok(false)) => {
                info!(lock = %self.describe, "leader election stopped; the lock was no longer ours")
            }
            Ok(Err(err)) => {
                warn!(lock = %self.describe, error = %err, "could not release the lock; another replica takes over when the lease expires")
            }
            Err(_) => {
                warn!(lock = %self.describe, after = ?limit, "could not release the lock in time; another replica takes over when the lease expires")
            }
        }
    }

    /// client-go `release`: writes an empty holder with a 1 s lease over the object we
    /// last wrote; if that changed meanwhile (e.g. an interrupted renewal did land),
    /// re-reads once and releases only if the lock is still ours.
    async fn release(&mut self) -> Result<bool, LeaderError> {
        let now = self.clock.now();
        let Some(record) = self
            .observed
            .as_ref()
            .and_then(|current| record::release(current, &self.identity, now))
        else {
            return Ok(false);
        };
        match self.lock.update(&record).await {
            Ok(()) => {
                self.wrote(record, now);
                return Ok(true);
            }
            Err(LeaderError::Conflict { .. } | LeaderError::NotRead { .. }) => {}
            Err(err) => return Err(err),
        }
        let Some(ReadRecord {
            record: current, ..
        }) = self.lock.get().await?
        else {
            return Ok(false);
        };
        let now = self.clock.now();
        let Some(record) = record::release(&current, &self.identity, now) else {
            self.saw(current);
            return Ok(false);
        };
        self.lock.update(&record).await?;
        self.wrote(record, now);
        Ok(true)
    }

    fn jittered(&self, period: Duration) -> Duration {
        period.mul_f64(1.0 + rand::random_range(0.0..JITTER_FACTOR))
    }

    /// After failures: retry period doubling per failure, capped at the lease, jittered.
    fn backoff(&self) -> Duration {
        let doublings = self.failures.streak.saturating_sub(1).min(16);
        let base = self
            .timing
            .retry_period
            .saturating_mul(1u32 << doublings)
            .min(self.timing.lease);
        self.jittered(base)
    }
}

#[cfg(test)]
mod tests;
