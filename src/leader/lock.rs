//! The two lock objects client-go (and so the Go DCA) elects on: a ConfigMap whose
//! `control-plane.alpha.kubernetes.io/leader` annotation holds the JSON record, and a
//! `coordination.k8s.io/v1` Lease whose spec holds the same fields.
//!
//! Both behave like client-go's resource locks: `get` remembers the object it read, and
//! `update` replaces that very object, so the apiserver rejects the write with 409 when
//! anyone changed it in between (optimistic concurrency on `resourceVersion`). That is the
//! only thing that keeps two candidates from both believing they won.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

use super::LeaderError;
use super::record::{LEADER_ANNOTATION, LeaderElectionRecord};
use crate::error::Cause;

/// A record as read from the lock, with the raw form whose changes mark the holder alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadRecord {
    pub record: LeaderElectionRecord,
    /// ConfigMap: the annotation exactly as stored (empty when missing). Lease: the record
    /// encoded as client-go encodes it, which is what client-go compares.
    pub raw: String,
}

/// What the election loop needs from a lock object. Every call is one API request (two
/// for `ensure_exists`), so the loop can bound each with its deadlines.
pub(crate) trait Lock: Send {
    /// Reads the record; `Ok(None)` when the lock object does not exist.
    async fn get(&mut self) -> Result<Option<ReadRecord>, LeaderError>;
    /// Creates the lock object holding `record`. [`LeaderError::Conflict`] when it exists.
    async fn create(&mut self, record: &LeaderElectionRecord) -> Result<(), LeaderError>;
    /// Replaces the object last read or written with one holding `record`.
    /// [`LeaderError::Conflict`] when it changed since.
    async fn update(&mut self, record: &LeaderElectionRecord) -> Result<(), LeaderError>;
    /// Creates the objects the Go DCA creates before electing (empty, no record) when
    /// missing, so a record we write first looks the same as one a Go replica writes first.
    async fn ensure_exists(&mut self) -> Result<(), LeaderError>;
    /// `configmap datadog/datadog-leader-election`, for logs and status.
    fn describe(&self) -> String;
}

/// Maps a kube error: 409 is a lost race, not a failure.
fn api_error(lock: &str, err: kube::Error) -> LeaderError {
    match &err {
        kube::Error::Api(status) if status.code == 409 => LeaderError::Conflict {
            lock: lock.to_owned(),
        },
        _ => LeaderError::Api {
            lock: lock.to_owned(),
            cause: Cause::new(err),
        },
    }
}

fn is_conflict(err: &LeaderError) -> bool {
    matches!(err, LeaderError::Conflict { .. })
}

async fn ensure_config_map(
    api: &Api<ConfigMap>,
    name: &str,
    lock: &str,
) -> Result<(), LeaderError> {
    if api
        .get_opt(name)
        .await
        .map_err(|e| api_error(lock, e))?
        .is_some()
    {
        return Ok(());
    }
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    match api.create(&PostParams::default(), &cm).await {
        Ok(_) => Ok(()),
        // Another replica created it first: exactly what we wanted.
        Err(e) => match api_error(lock, e) {
            e if is_conflict(&e) => Ok(()),
            e => Err(e),
        },
    }
}

/// client-go `ConfigMapLock`, as vendored by the Go DCA.
pub(crate) struct ConfigMapLock {
    api: Api<ConfigMap>,
    name: String,
    describe: String,
    /// The object last read or written; updates replace it (keeping its resourceVersion and
    /// any other annotation or data someone put there).
    current: Option<ConfigMap>,
}

impl ConfigMapLock {
    pub(super) fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        ConfigMapLock {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            describe: format!("configmap {namespace}/{name}"),
            current: None,
        }
    }
}

fn annotation_of(cm: &ConfigMap) -> Option<&str> {
    cm.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEADER_ANNOTATION))
        .map(String::as_str)
}

fn with_record(mut cm: ConfigMap, record: &LeaderElectionRecord) -> ConfigMap {
    cm.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(LEADER_ANNOTATION.to_owned(), record.encode());
    cm
}

impl Lock for ConfigMapLock {
    async fn get(&mut self) -> Result<Option<ReadRecord>, LeaderError> {
        let Some(cm) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| api_error(&self.describe, e))?
        else {
            self.current = None;
            return Ok(None);
        };
        let raw = annotation_of(&cm).map(str::to_owned);
        self.current = Some(cm);
        let record = LeaderElectionRecord::from_annotation(raw.as_deref()).map_err(|e| {
            LeaderError::Record {
                lock: self.describe.clone(),
                cause: Cause::new(e),
            }
        })?;
        Ok(Some(ReadRecord {
            record,
            raw: raw.unwrap_or_default(),
        }))
    }

    async fn create(&mut self, record: &LeaderElectionRecord) -> Result<(), LeaderError> {
        let cm = with_record(
            ConfigMap {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            },
            record,
        );
        let created = self
            .api
            .create(&PostParams::default(), &cm)
            .await
            .map_err(|e| api_error(&self.describe, e))?;
        self.current = Some(created);
        Ok(())
    }

    async fn update(&mut self, record: &LeaderElectionRecord) -> Result<(), LeaderError> {
        let Some(current) = self.current.clone() else {
            return Err(LeaderError::NotRead {
                lock: self.describe.clone(),
            });
        };
        let updated = self
            .api
            .replace(
                &self.name,
                &PostParams::default(),
                &with_record(current, record),
            )
            .await
            .map_err(|e| api_error(&self.describe, e))?;
        self.current = Some(updated);
        Ok(())
    }

    async fn ensure_exists(&mut self) -> Result<(), LeaderError> {
        ensure_config_map(&self.api, &self.name, &self.describe).await
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// client-go `LeaseLock`. The Go DCA also keeps a ConfigMap of the same name around in
/// this mode, so this lock ensures both exist.
pub(crate) struct LeaseLock {
    api: Api<Lease>,
    config_maps: Api<ConfigMap>,
    name: String,
    describe: String,
    config_map_describe: String,
    current: Option<Lease>,
}

impl LeaseLock {
    pub(super) fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        LeaseLock {
            api: Api::namespaced(client.clone(), namespace),
            config_maps: Api::namespaced(client, namespace),
            name: name.to_owned(),
            describe: format!("lease {namespace}/{name}"),
            config_map_describe: format!("configmap {namespace}/{name}"),
            current: None,
        }
    }
}

/// client-go `LeaseSpecToLeaderElectionRecord`: absent fields are zero values.
pub(crate) fn record_from_spec(spec: Option<&LeaseSpec>) -> LeaderElectionRecord {
    let Some(spec) = spec else {
        return LeaderElectionRecord::default();
    };
    LeaderElectionRecord {
        holder_identity: spec.holder_identity.clone().unwrap_or_default(),
        lease_duration_seconds: spec.lease_duration_seconds.map_or(0, i64::from),
        acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
        renew_time: spec.renew_time.as_ref().map(|t| t.0),
        leader_transitions: spec.lease_transitions.map_or(0, i64::from),
    }
}

fn clamp_i32(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(if v < 0 { i32::MIN } else { i32::MAX })
}

/// client-go `LeaderElectionRecordToLeaseSpec`: the whole spec is rewritten (a newer
/// writer's `strategy`/`preferredHolder` are dropped, as client-go drops them when its
/// record has none), and the holder is written even when empty (a release).
pub(crate) fn spec_from_record(record: &LeaderElectionRecord) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(record.holder_identity.clone()),
        lease_duration_seconds: Some(clamp_i32(record.lease_duration_seconds)),
        acquire_time: record.acquire_time.map(MicroTime),
        renew_time: record.renew_time.map(MicroTime),
        lease_transitions: Some(clamp_i32(record.leader_transitions)),
        preferred_holder: None,
        strategy: None,
    }
}

impl Lock for LeaseLock {
    async fn get(&mut self) -> Result<Option<ReadRecord>, LeaderError> {
        let Some(lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| api_error(&self.describe, e))?
        else {
            self.current = None;
            return Ok(None);
        };
        let record = record_from_spec(lease.spec.as_ref());
        self.current = Some(lease);
        Ok(Some(ReadRecord {
            raw: record.encode(),
            record,
        }))
    }

    async fn create(&mut self, record: &LeaderElectionRecord) -> Result<(), LeaderError> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec_from_record(record)),
        };
        let created = self
            .api
            .create(&PostParams::default(), &lease)
            .await
            .map_err(|e| api_error(&self.describe, e))?;
        self.current = Some(created);
        Ok(())
    }

    async fn update(&mut self, record: &LeaderElectionRecord) -> Result<(), LeaderError> {
        let Some(mut lease) = self.current.clone() else {
            return Err(LeaderError::NotRead {
                lock: self.describe.clone(),
            });
        };
        lease.spec = Some(spec_from_record(record));
        let updated = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| api_error(&self.describe, e))?;
        self.current = Some(updated);
        Ok(())
    }

    async fn ensure_exists(&mut self) -> Result<(), LeaderError> {
        if self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| api_error(&self.describe, e))?
            .is_none()
        {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: None,
            };
            if let Err(e) = self.api.create(&PostParams::default(), &lease).await {
                let e = api_error(&self.describe, e);
                if !is_conflict(&e) {
                    return Err(e);
                }
            }
        }
        ensure_config_map(&self.config_maps, &self.name, &self.config_map_describe).await
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn lease_spec_round_trip_keeps_microseconds() {
        let record = LeaderElectionRecord {
            holder_identity: "dca-0".into(),
            lease_duration_seconds: 60,
            acquire_time: Some(ts("2025-01-01T00:00:00.123456Z")),
            renew_time: Some(ts("2025-01-01T00:00:30.5Z")),
            leader_transitions: 4,
        };
        let spec = spec_from_record(&record);
        assert_eq!(spec.holder_identity.as_deref(), Some("dca-0"));
        assert_eq!(spec.lease_duration_seconds, Some(60));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(record_from_spec(Some(&spec)), record);
        // What the apiserver gets: client-go's field names and MicroTime strings.
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "holderIdentity": "dca-0",
                "leaseDurationSeconds": 60,
                "acquireTime": "2025-01-01T00:00:00.123456Z",
                "renewTime": "2025-01-01T00:00:30.500000Z",
                "leaseTransitions": 4,
            })
        );
    }

    #[test]
    fn lease_spec_vectors() {
        // An empty Lease (as the Go DCA pre-creates it) is an empty record: nobody leads.
        assert_eq!(record_from_spec(None), LeaderElectionRecord::default());
        assert_eq!(
            record_from_spec(Some(&LeaseSpec::default())),
            LeaderElectionRecord::default()
        );
        // A released record keeps an explicit empty holder, as client-go writes it.
        let released = LeaderElectionRecord {
            holder_identity: String::new(),
            lease_duration_seconds: 1,
            acquire_time: Some(ts("2025-01-01T00:00:00Z")),
            renew_time: Some(ts("2025-01-01T00:00:00Z")),
            leader_transitions: 2,
        };
        assert_eq!(
            spec_from_record(&released).holder_identity.as_deref(),
            Some("")
        );
        // Out-of-range values saturate instead of wrapping into nonsense.
        let huge = LeaderElectionRecord {
            lease_duration_seconds: i64::MAX,
            leader_transitions: i64::MIN,
            ..LeaderElectionRecord::default()
        };
        let spec = spec_from_record(&huge);
        assert_eq!(spec.lease_duration_seconds, Some(i32::MAX));
        assert_eq!(spec.lease_transitions, Some(i32::MIN));
    }

    #[test]
    fn config_map_record_keeps_other_annotations() {
        let mut annotations = BTreeMap::new();
        annotations.insert("owner".to_owned(), "helm".to_owned());
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("datadog-leader-election".into()),
                resource_version: Some("42".into()),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        assert_eq!(annotation_of(&cm), None);
        let record = LeaderElectionRecord {
            holder_identity: "dca-1".into(),
            lease_duration_seconds: 60,
            acquire_time: Some(ts("2025-01-01T00:00:00Z")),
            renew_time: Some(ts("2025-01-01T00:00:15Z")),
            leader_transitions: 1,
        };
        let cm = with_record(cm, &record);
        assert_eq!(cm.metadata.resource_version.as_deref(), Some("42"));
        let annotations = cm.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["owner"], "helm");
        assert_eq!(
            annotation_of(&cm),
            Some(
                r#"{"holderIdentity":"dca-1","leaseDurationSeconds":60,"acquireTime":"2025-01-01T00:00:00Z","renewTime":"2025-01-01T00:00:15Z","leaderTransitions":1}"#
            )
        );
    }
}
