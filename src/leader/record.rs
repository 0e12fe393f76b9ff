//! Leader election record and client-go style lock decisions (dca-contract §5).
//!
//! The record is the JSON that client-go's `resourcelock.LeaderElectionRecord` marshals
//! (the DCA stores it in the `control-plane.alpha.kubernetes.io/leader` annotation of the
//! `datadog-leader-election` ConfigMap):
//! `{"holderIdentity":"…","leaseDurationSeconds":60,"acquireTime":"2025-01-01T00:00:00Z","renewTime":"2025-01-01T00:00:00Z","leaderTransitions":0}`.
//! Times are `metav1.Time`: RFC 3339, whole seconds, UTC; a zero time is `null`.
//!
//! The decision follows client-go `tryAcquireOrRenew`: a lock held by someone else is
//! respected until `observed_at + leaseDurationSeconds`, where `observed_at` is the
//! **local** time at which the current record (its raw bytes) was first seen. The
//! timestamps inside the record are informational only, which makes the algorithm
//! tolerant to clock skew between replicas. See [`observe`].

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Annotation holding the record on the ConfigMap lock.
pub const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// Go's zero `time.Time` (`0001-01-01T00:00:00Z`), which `metav1.Time` writes as `null`.
const GO_ZERO_TIME_SECS: i64 = -62_135_596_800;

/// client-go `LeaderElectionRecord`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderElectionRecord {
    /// Current holder; empty when nobody holds the lock (e.g. after a release).
    #[serde(default, deserialize_with = "null_as_default")]
    pub holder_identity: String,
    /// Lease duration the holder announced, seconds.
    #[serde(default, deserialize_with = "null_as_default")]
    pub lease_duration_seconds: i64,
    /// When the current holder acquired the lock (`None` = Go zero time, `null`).
    #[serde(default, with = "metav1_time")]
    pub acquire_time: Option<Timestamp>,
    /// When the current holder last renewed the lock.
    #[serde(default, with = "metav1_time")]
    pub renew_time: Option<Timestamp>,
    /// Number of times the lock changed hands.
    #[serde(default, deserialize_with = "null_as_default")]
    pub leader_transitions: i64,
}

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The annotation is not a valid record.
    #[error("could not decode the leader election record: {0}")]
    Decode(String),
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `metav1.Time` JSON: RFC 3339 seconds in UTC, `null` for the zero time.
pub mod metav1_time {
    use super::*;

    /// Serializes `None` as `null` and `Some(t)` as `format_time(t)`.
    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            None => s.serialize_none(),
            Some(t) => s.serialize_str(&format_time(*t)),
        }
    }

    /// Accepts `null` or an RFC 3339 string (any offset, optional fraction). Go's zero
    /// time reads as `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        let Some(s) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let t = parse_time(&s).map_err(serde::de::Error::custom)?;
        Ok(
            if t.as_second() == GO_ZERO_TIME_SECS && t.subsec_nanosecond() == 0 {
                None
            } else {
                Some(t)
            },
        )
    }
}

/// Formats a time as `metav1.Time` does: `2006-01-02T15:04:05Z` (UTC, fraction dropped).
pub(crate) fn format_time(t: Timestamp) -> String {
    truncate_to_second(t)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Parses an RFC 3339 time (`metav1.Time` reads with `time.RFC3339`).
pub(crate) fn parse_time(s: &str) -> Result<Timestamp, String> {
    s.parse::<Timestamp>()
        .map_err(|e| format!("invalid RFC 3339 time {s:?}: {e}"))
}

/// Rounds down to the whole second (what survives a round trip through the record).
pub(crate) fn truncate_to_second(t: Timestamp) -> Timestamp {
    let mut secs = t.as_second();
    if t.subsec_nanosecond() < 0 {
        secs -= 1;
    }
    Timestamp::from_second(secs).unwrap_or(t)
}

impl LeaderElectionRecord {
    /// Encodes the record as client-go does (`json.Marshal`).
    pub fn encode(&self) -> String {
        // Only strings, integers and nulls: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes the annotation value. Unknown fields are ignored (newer client-go adds
    /// `strategy` and `preferredHolder`); missing or `null` fields take their zero value.
    pub fn decode(json: &str) -> Result<Self, RecordError> {
        // serde would also accept a struct written as a JSON array; Go does not.
        if !json.trim_start().starts_with('{') {
            return Err(RecordError::Decode("expected a JSON object".to_owned()));
        }
        serde_json::from_str(json).map_err(|e| RecordError::Decode(e.to_string()))
    }

    /// Record read from a lock object whose annotation may be missing: a missing
    /// annotation is an empty record (nobody holds the lock), as in client-go.
    pub fn from_annotation(value: Option<&str>) -> Result<Self, RecordError> {
        match value {
            None => Ok(LeaderElectionRecord::default()),
            Some(v) => LeaderElectionRecord::decode(v),
        }
    }

    /// `true` when `identity` holds the lock. An empty holder is nobody, even for an
    /// empty identity.
    pub fn is_held_by(&self, identity: &str) -> bool {
        !self.holder_identity.is_empty() && self.holder_identity == identity
    }
}

/// When the raw record was first seen locally (client-go `observedRawRecord` /
/// `observedTime`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observation {
    /// The raw annotation (or lease record JSON) last seen.
    pub raw: String,
    /// Local time at which `raw` was first seen.
    pub observed_at: Timestamp,
}

/// Updates the observation after reading `raw` at `now`: the time is kept while the raw
/// record does not change, and reset to `now` when it does.
pub(crate) fn observe(previous: Option<&Observation>, raw: &str, now: Timestamp) -> Observation {
    match previous {
        Some(p) if p.raw == raw => p.clone(),
        _ => Observation {
            raw: raw.to_owned(),
            observed_at: now,
        },
    }
}

/// What to do with the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Take the lock: write `record` (create the lock object if there was none, else
    /// update it, with optimistic concurrency on its resourceVersion).
    Acquire {
        /// The record to write.
        record: LeaderElectionRecord,
    },
    /// We hold the lock: write `record` to renew it.
    Renew {
        /// The record to write.
        record: LeaderElectionRecord,
    },
    /// Someone else holds a lease that has not expired.
    Wait {
        /// The current holder.
        leader: String,
        /// When the lease expires if not renewed (local clock).
        until: Timestamp,
    },
}

/// Decides, like client-go `tryAcquireOrRenew`, what to do with the lock.
///
/// - `current`: the record read from the lock object, `None` when the object does not
///   exist (then the record to create has `leaderTransitions: 0`).
/// - `observed_at`: local time at which `current` was first seen unchanged (see
///   [`observe`]); ignored when `current` is `None`.
/// - `identity`: our identity (pod name); must not be empty.
/// - `lease_duration`: our configured lease (`leader_lease_duration`), written into the
///   record (whole seconds).
///
/// Rules: a record held by someone else is waited for until
/// `observed_at + current.leaseDurationSeconds` (strictly after `now` → wait). If we hold
/// it, renew it, keeping `acquireTime` and `leaderTransitions`. Otherwise (no holder, or
/// an expired lease) take it with `acquireTime = renewTime = now` and
/// `leaderTransitions + 1`.
pub fn decide(
    current: Option<&LeaderElectionRecord>,
    observed_at: Timestamp,
    identity: &str,
    now: Timestamp,
    lease_duration: SignedDuration,
) -> Decision {
    let mut record = LeaderElectionRecord {
        holder_identity: identity.to_owned(),
        lease_duration_seconds: lease_duration.as_secs(),
        acquire_time: Some(now),
        renew_time: Some(now),
        leader_transitions: 0,
    };
    let Some(current) = current else {
        return Decision::Acquire { record };
    };

    if current.is_held_by(identity) {
        record.acquire_time = current.acquire_time;
        record.leader_transitions = current.leader_transitions;
        return Decision::Renew { record };
    }

    if !current.holder_identity.is_empty() {
        let until = add_secs(observed_at, current.lease_duration_seconds);
        if until > now {
            return Decision::Wait {
                leader: current.holder_identity.clone(),
                until,
            };
        }
    }

    record.leader_transitions = current.leader_transitions.saturating_add(1);
    Decision::Acquire { record }
}

/// The record to write when giving up the lock on shutdown (client-go `release`, with
/// `ReleaseOnCancel`): empty holder, 1 s lease, times = now, transitions kept. `None` when
/// we do not hold the lock (nothing to do).
pub fn release(
    current: &LeaderElectionRecord,
    identity: &str,
    now: Timestamp,
) -> Option<LeaderElectionRecord> {
    current.is_held_by(identity).then(|| LeaderElectionRecord {
        holder_identity: String::new(),
        lease_duration_seconds: 1,
        acquire_time: Some(now),
        renew_time: Some(now),
        leader_transitions: current.leader_transitions,
    })
}

fn add_secs(t: Timestamp, secs: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(secs))
        .unwrap_or(if secs >= 0 {
            Timestamp::MAX
        } else {
            Timestamp::MIN
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const LEASE: SignedDuration = SignedDuration::from_secs(60);

    fn rec(
        holder: &str,
        lease: i64,
        acquire: &str,
        renew: &str,
        transitions: i64,
    ) -> LeaderElectionRecord {
        LeaderElectionRecord {
            holder_identity: holder.to_owned(),
            lease_duration_seconds: lease,
            acquire_time: Some(ts(acquire)),
            renew_time: Some(ts(renew)),
            leader_transitions: transitions,
        }
    }

    #[test]
    fn encode_matches_client_go() {
        let cases: &[(LeaderElectionRecord, &str)] = &[
            (
                rec(
                    "dca-0",
                    60,
                    "2025-01-01T00:00:00Z",
                    "2025-01-01T00:00:30Z",
                    0,
                ),
                r#"{"holderIdentity":"dca-0","leaseDurationSeconds":60,"acquireTime":"2025-01-01T00:00:00Z","renewTime":"2025-01-01T00:00:30Z","leaderTransitions":0}"#,
            ),
            (
                // Fractions are dropped, offsets become UTC.
                rec(
                    "datadog-cluster-agent-7d9f8b6c5-abcde",
                    15,
                    "2024-03-10T12:34:56.789+01:00",
                    "2024-03-10T11:35:10.000000001Z",
                    7,
                ),
                r#"{"holderIdentity":"datadog-cluster-agent-7d9f8b6c5-abcde","leaseDurationSeconds":15,"acquireTime":"2024-03-10T11:34:56Z","renewTime":"2024-03-10T11:35:10Z","leaderTransitions":7}"#,
            ),
            (
                LeaderElectionRecord::default(),
                r#"{"holderIdentity":"","leaseDurationSeconds":0,"acquireTime":null,"renewTime":null,"leaderTransitions":0}"#,
            ),
        ];
        for (r, want) in cases {
            assert_eq!(r.encode(), *want);
        }
    }

    #[test]
    fn decode_vectors() {
        let cases: &[(&str, LeaderElectionRecord)] = &[
            (
                r#"{"holderIdentity":"dca-0","leaseDurationSeconds":60,"acquireTime":"2025-01-01T00:00:00Z","renewTime":"2025-01-01T00:00:30Z","leaderTransitions":3}"#,
                rec(
                    "dca-0",
                    60,
                    "2025-01-01T00:00:00Z",
                    "2025-01-01T00:00:30Z",
                    3,
                ),
            ),
            // Newer client-go fields and unknown fields are ignored; offsets accepted.
            (
                r#"{"holderIdentity":"a","leaseDurationSeconds":15,"acquireTime":"2025-01-01T01:00:00+01:00","renewTime":"2025-01-01T00:00:05.5Z","leaderTransitions":1,"strategy":"OldestEmulationVersion","preferredHolder":"b"}"#,
                rec("a", 15, "2025-01-01T00:00:00Z", "2025-01-01T00:00:05.5Z", 1),
            ),
            // Released lock (client-go `release`).
            (
                r#"{"holderIdentity":"","leaseDurationSeconds":1,"acquireTime":"2025-01-01T00:00:00Z","renewTime":"2025-01-01T00:00:00Z","leaderTransitions":4}"#,
                rec("", 1, "2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z", 4),
            ),
            ("{}", LeaderElectionRecord::default()),
            (
                r#"{"holderIdentity":null,"acquireTime":null,"renewTime":"0001-01-01T00:00:00Z"}"#,
                LeaderElectionRecord::default(),
            ),
        ];
        for (json, want) in cases {
            assert_eq!(
                LeaderElectionRecord::decode(json).as_ref(),
                Ok(want),
                "{json}"
            );
        }
        for bad in [
            "",
            "null",
            "[]",
            r#"{"acquireTime":""}"#,
            r#"{"acquireTime":"yesterday"}"#,
            r#"{"acquireTime":"2025-01-01T00:00:00"}"#,
            r#"{"leaseDurationSeconds":"60"}"#,
            r#"{"leaseDurationSeconds":1.5}"#,
        ] {
            assert!(LeaderElectionRecord::decode(bad).is_err(), "{bad}");
        }
        assert_eq!(
            LeaderElectionRecord::from_annotation(None),
            Ok(LeaderElectionRecord::default())
        );
    }

    #[test]
    fn round_trip_through_json() {
        let r = rec("x", 60, "2025-06-01T10:00:00Z", "2025-06-01T10:00:45Z", 2);
        assert_eq!(LeaderElectionRecord::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn observe_keeps_time_while_unchanged() {
        let t0 = ts("2025-01-01T00:00:00Z");
        let t1 = ts("2025-01-01T00:00:10Z");
        let o = observe(None, "a", t0);
        assert_eq!(o.observed_at, t0);
        assert_eq!(observe(Some(&o), "a", t1).observed_at, t0);
        assert_eq!(observe(Some(&o), "b", t1).observed_at, t1);
    }

    #[test]
    fn decide_vectors() {
        let t0 = ts("2025-01-01T00:00:00Z");
        let at = |s: i64| t0.checked_add(SignedDuration::from_secs(s)).unwrap();
        let other = rec(
            "other",
            60,
            "2024-12-31T23:00:00Z",
            "2024-12-31T23:59:59Z",
            5,
        );
        let mine = rec("me", 60, "2024-12-31T23:00:00Z", "2024-12-31T23:59:59Z", 5);
        let released = rec("", 1, "2024-12-31T23:59:00Z", "2024-12-31T23:59:00Z", 5);
        let empty = LeaderElectionRecord::default();
        let fresh = |transitions: i64, now: Timestamp| LeaderElectionRecord {
            holder_identity: "me".into(),
            lease_duration_seconds: 60,
            acquire_time: Some(now),
            renew_time: Some(now),
            leader_transitions: transitions,
        };

        // (current, observed_at, now, expected)
        let cases: Vec<(
            Option<&LeaderElectionRecord>,
            Timestamp,
            Timestamp,
            Decision,
        )> = vec![
            // No lock object: create it.
            (
                None,
                t0,
                at(0),
                Decision::Acquire {
                    record: fresh(0, at(0)),
                },
            ),
            // Held by someone else, lease running (observed_at + 60 > now).
            (
                Some(&other),
                t0,
                at(0),
                Decision::Wait {
                    leader: "other".into(),
                    until: at(60),
                },
            ),
            (
                Some(&other),
                t0,
                at(59),
                Decision::Wait {
                    leader: "other".into(),
                    until: at(60),
                },
            ),
            // Exactly at expiry: client-go's `After` is strict, so it is expired.
            (
                Some(&other),
                t0,
                at(60),
                Decision::Acquire {
                    record: fresh(6, at(60)),
                },
            ),
            (
                Some(&other),
                t0,
                at(61),
                Decision::Acquire {
                    record: fresh(6, at(61)),
                },
            ),
            // The record's own (old) renewTime is irrelevant: only the local observation counts.
            (
                Some(&other),
                at(100),
                at(120),
                Decision::Wait {
                    leader: "other".into(),
                    until: at(160),
                },
            ),
            // We hold it: renew, keeping acquireTime and transitions.
            (
                Some(&mine),
                t0,
                at(30),
                Decision::Renew {
                    record: LeaderElectionRecord {
                        holder_identity: "me".into(),
                        lease_duration_seconds: 60,
                        acquire_time: mine.acquire_time,
                        renew_time: Some(at(30)),
                        leader_transitions: 5,
                    },
                },
            ),
            // We hold it even past expiry: still a renew.
            (
                Some(&mine),
                t0,
                at(600),
                Decision::Renew {
                    record: LeaderElectionRecord {
                        holder_identity: "me".into(),
                        lease_duration_seconds: 60,
                        acquire_time: mine.acquire_time,
                        renew_time: Some(at(600)),
                        leader_transitions: 5,
                    },
                },
            ),
            // Released (empty holder): take it at once, transitions + 1.
            (
                Some(&released),
                t0,
                at(0),
                Decision::Acquire {
                    record: fresh(6, at(0)),
                },
            ),
            // Missing annotation (empty record).
            (
                Some(&empty),
                t0,
                at(0),
                Decision::Acquire {
                    record: fresh(1, at(0)),
                },
            ),
        ];
        for (i, (current, observed_at, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                decide(current, observed_at, "me", now, LEASE),
                want,
                "case {i}"
            );
        }
    }

    #[test]
    fn decide_uses_the_record_lease_for_expiry() {
        let t0 = ts("2025-01-01T00:00:00Z");
        let short = rec(
            "other",
            15,
            "2025-01-01T00:00:00Z",
            "2025-01-01T00:00:00Z",
            0,
        );
        let now = t0.checked_add(SignedDuration::from_secs(20)).unwrap();
        assert!(matches!(
            decide(Some(&short), t0, "me", now, LEASE),
            Decision::Acquire { .. }
        ));
        // Absurd lease durations don't overflow.
        let huge = rec(
            "other",
            i64::MAX,
            "2025-01-01T00:00:00Z",
            "2025-01-01T00:00:00Z",
            0,
        );
        assert_eq!(
            decide(Some(&huge), t0, "me", now, LEASE),
            Decision::Wait {
                leader: "other".into(),
                until: Timestamp::MAX
            }
        );
        let negative = rec(
            "other",
            -10,
            "2025-01-01T00:00:00Z",
            "2025-01-01T00:00:00Z",
            i64::MAX,
        );
        let Decision::Acquire { record } = decide(Some(&negative), t0, "me", now, LEASE) else {
            panic!("expected acquire");
        };
        assert_eq!(record.leader_transitions, i64::MAX);
    }

    #[test]
    fn new_record_lease_is_whole_seconds() {
        let t0 = ts("2025-01-01T00:00:00Z");
        let Decision::Acquire { record } =
            decide(None, t0, "me", t0, SignedDuration::from_millis(15_900))
        else {
            panic!("expected acquire");
        };
        assert_eq!(record.lease_duration_seconds, 15);
    }

    #[test]
    fn release_vectors() {
        let now = ts("2025-01-01T00:01:00Z");
        let mine = rec("me", 60, "2025-01-01T00:00:00Z", "2025-01-01T00:00:30Z", 3);
        assert_eq!(
            release(&mine, "me", now),
            Some(LeaderElectionRecord {
                holder_identity: String::new(),
                lease_duration_seconds: 1,
                acquire_time: Some(now),
                renew_time: Some(now),
                leader_transitions: 3,
            })
        );
        assert_eq!(release(&mine, "other", now), None);
        assert_eq!(release(&LeaderElectionRecord::default(), "", now), None);
    }

    #[test]
    fn is_held_by_vectors() {
        let r = rec("me", 60, "2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z", 0);
        assert!(r.is_held_by("me"));
        assert!(!r.is_held_by("Me"));
        assert!(!r.is_held_by(""));
        assert!(!LeaderElectionRecord::default().is_held_by(""));
    }

    #[test]
    fn time_format_vectors() {
        let cases: &[(&str, &str)] = &[
            ("2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z"),
            ("2025-01-01T00:00:00.999Z", "2025-01-01T00:00:00Z"),
            ("2025-01-01T05:30:00+05:30", "2025-01-01T00:00:00Z"),
            ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"),
            ("1969-12-31T23:59:59.9Z", "1969-12-31T23:59:59Z"),
        ];
        for (input, want) in cases {
            assert_eq!(format_time(ts(input)), *want, "{input}");
        }
        assert_eq!(
            LEADER_ANNOTATION,
            "control-plane.alpha.kubernetes.io/leader"
        );
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decode_never_panics(s in any::<String>()) {
                let _ = LeaderElectionRecord::decode(&s);
            }

            #[test]
            fn round_trip(
                holder in any::<String>(),
                lease in any::<i64>(),
                a in proptest::option::of(-60_000_000_000i64..250_000_000_000i64),
                r in proptest::option::of(-60_000_000_000i64..250_000_000_000i64),
                transitions in any::<i64>(),
            ) {
                let rec = LeaderElectionRecord {
                    holder_identity: holder,
                    lease_duration_seconds: lease,
                    acquire_time: a.map(|s| Timestamp::from_second(s).unwrap()),
                    renew_time: r.map(|s| Timestamp::from_second(s).unwrap()),
                    leader_transitions: transitions,
                };
                prop_assert_eq!(LeaderElectionRecord::decode(&rec.encode()), Ok(rec));
            }

            #[test]
            fn decision_invariants(
                holder in prop_oneof![Just(String::new()), Just("me".to_owned()), Just("other".to_owned())],
                lease in -100i64..1000,
                observed in 0i64..10_000,
                now in 0i64..10_000,
                transitions in 0i64..1000,
            ) {
                let cur = LeaderElectionRecord {
                    holder_identity: holder.clone(),
                    lease_duration_seconds: lease,
                    acquire_time: None,
                    renew_time: None,
                    leader_transitions: transitions,
                };
                let t = |s: i64| Timestamp::from_second(1_700_000_000 + s).unwrap();
                match decide(Some(&cur), t(observed), "me", t(now), SignedDuration::from_secs(60)) {
                    Decision::Acquire { record } => {
                        prop_assert_eq!(record.holder_identity, "me");
                        prop_assert_eq!(record.leader_transitions, transitions + 1);
                        prop_assert!(holder != "me");
                        prop_assert!(holder.is_empty() || observed + lease <= now);
                    }
                    Decision::Renew { record } => {
                        prop_assert_eq!(holder, "me");
                        prop_assert_eq!(record.leader_transitions, transitions);
                    }
                    Decision::Wait { leader, until } => {
                        prop_assert_eq!(leader, "other");
                        prop_assert!(until > t(now));
                    }
                }
            }
        }
    }
}
