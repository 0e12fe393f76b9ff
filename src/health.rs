//! Component health: what `/status/health` and the `health` command report, and what the
//! Kubernetes probes on `health_port` gate.
//!
//! Each subsystem registers a named check that says, when asked, whether it is healthy and
//! if not why. Unlike the Go DCA (whose liveness includes the forwarder, so a rejected API
//! key restarts the pod) a component says which probes it gates: a Datadog outage shows in
//! `health` but neither restarts the pod nor pulls the node-agent API out of its Service.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// Which answers a component counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// `/live`, `/ready`, `/startup` and `health`: a restart is what fixes it.
    Liveness,
    /// `/ready`, `/startup` and `health`: the pod should not take traffic until it passes.
    Readiness,
    /// `health` only: the operator must know, but neither a restart nor less traffic helps.
    Report,
}

/// `Ok`, or why the component is unhealthy (what is missing and how to fix it).
pub(crate) type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

struct Component {
    name: &'static str,
    gate: Gate,
    check: Check,
}

/// The Go DCA's `health.Status` (`{"Healthy":[…],"Unhealthy":[…]}`, names sorted), with
/// the reasons of the unhealthy ones, which Go does not give.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Status {
    #[serde(default, deserialize_with = "null_is_empty")]
    pub(crate) healthy: Vec<String>,
    #[serde(default, deserialize_with = "null_is_empty")]
    pub(crate) unhealthy: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) reasons: BTreeMap<String, String>,
}

/// Go marshals an empty list as `null`; the CLI may talk to either agent.
fn null_is_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

impl Status {
    pub(crate) fn is_healthy(&self) -> bool {
        self.unhealthy.is_empty()
    }
}

/// The registry every subsystem adds its check to at start-up; cheap to ask (each check
/// reads state its subsystem keeps anyway).
#[derive(Default)]
pub(crate) struct Health {
    components: RwLock<Vec<Component>>,
    /// `/startup` passed once: Kubernetes stops asking, and so does it.
    started: AtomicBool,
}

impl Health {
    pub(crate) fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    pub(crate) fn register(&self, name: &'static str, gate: Gate, check: Check) {
        let mut components = self
            .components
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        components.push(Component { name, gate, check });
    }

    fn status(&self, counts: impl Fn(Gate) -> bool) -> Status {
        let components = self
            .components
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut status = Status::default();
        for component in components.iter().filter(|c| counts(c.gate)) {
            match (component.check)() {
                Ok(()) => status.healthy.push(component.name.to_owned()),
                Err(reason) => {
                    status.unhealthy.push(component.name.to_owned());
                    status.reasons.insert(component.name.to_owned(), reason);
                }
            }
        }
        status.healthy.sort();
        status.unhealthy.sort();
        status
    }

    /// `/live`.
    pub(crate) fn live(&self) -> Status {
        self.status(|gate| gate == Gate::Liveness)
    }

    /// `/ready`.
    pub(crate) fn ready(&self) -> Status {
        self.status(|gate| gate != Gate::Report)
    }

    /// `/startup`: `/ready` until it passes once, then passing for good, as a startup probe
    /// is only asked until it succeeds.
    pub(crate) fn startup(&self) -> Status {
        if self.started.load(Ordering::Relaxed) {
            let mut status = self.ready();
            status.healthy.append(&mut status.unhealthy);
            status.healthy.sort();
            status.reasons.clear();
            return status;
        }
        let status = self.ready();
        if status.is_healthy() {
            self.started.store(true, Ordering::Relaxed);
        }
        status
    }

    /// `/status/health` and the `health` command: every component.
    pub(crate) fn all(&self) -> Status {
        self.status(|_| true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    fn switch(on: bool) -> (Arc<AtomicBool>, Check) {
        let flag = Arc::new(AtomicBool::new(on));
        let read = Arc::clone(&flag);
        let check: Check = Box::new(move || {
            if read.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("switched off".to_owned())
            }
        });
        (flag, check)
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn each_probe_counts_only_the_components_it_gates_on() {
        let health = Health::new();
        let (_, live) = switch(false);
        let (_, ready) = switch(true);
        let (_, report) = switch(false);
        health.register("runtime", Gate::Liveness, live);
        health.register("metadata-store", Gate::Readiness, ready);
        health.register("datadog-api", Gate::Report, report);
        // probe → (healthy, unhealthy)
        let cases: [(&str, Status, &[&str], &[&str]); 3] = [
            ("live", health.live(), &[], &["runtime"]),
            ("ready", health.ready(), &["metadata-store"], &["runtime"]),
            (
                "all",
                health.all(),
                &["metadata-store"],
                &["datadog-api", "runtime"],
            ),
        ];
        for (probe, status, healthy, unhealthy) in cases {
            assert_eq!(status.healthy, names(healthy), "{probe}");
            assert_eq!(status.unhealthy, names(unhealthy), "{probe}");
            assert_eq!(
                status.reasons.keys().cloned().collect::<Vec<_>>(),
                names(unhealthy),
                "{probe}"
            );
        }
        assert_eq!(health.all().reasons["datadog-api"], "switched off");
    }

    #[test]
    fn startup_passes_for_good_once_ready_passed() {
        let health = Health::new();
        let (flag, check) = switch(false);
        health.register("metadata-store", Gate::Readiness, check);
        assert!(!health.startup().is_healthy());
        flag.store(true, Ordering::Relaxed);
        assert!(health.startup().is_healthy());
        flag.store(false, Ordering::Relaxed);
        assert!(!health.ready().is_healthy());
        let startup = health.startup();
        assert!(startup.is_healthy(), "{startup:?}");
        assert_eq!(startup.healthy, names(&["metadata-store"]));
    }

    #[test]
    fn the_json_is_the_go_shape_and_reads_go_nulls() {
        let status = Status {
            healthy: names(&["a", "b"]),
            unhealthy: Vec::new(),
            reasons: BTreeMap::new(),
        };
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            r#"{"Healthy":["a","b"],"Unhealthy":[]}"#
        );
        let from_go: Status =
            serde_json::from_str(r#"{"Healthy":["healthcheck"],"Unhealthy":null}"#).unwrap();
        assert_eq!(from_go.healthy, names(&["healthcheck"]));
        assert!(from_go.is_healthy());
    }
}
