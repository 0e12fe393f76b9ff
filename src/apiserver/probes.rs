//! `/healthz`, `/livez`, `/readyz` and their `/ping` forms, answered without authentication
//! (Go's `AlwaysAllowPaths`: the kubelet calls them without credentials).

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use tokio::sync::watch;

use crate::apimachinery::status::{PrebuiltStatus, Status};
use crate::apiserver::response::{Body, method_not_allowed, text};
use crate::apiserver::seams::Readiness;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Healthz,
    Livez,
    Readyz,
    /// `/healthz/ping`, `/livez/ping`, `/readyz/ping`: always ok while the process answers.
    Ping,
}

impl Probe {
    /// The probe an exactly-spelled path names, for answering probes before any routing.
    pub fn from_exact_path(path: &str) -> Option<Probe> {
        Some(match path {
            "/healthz" => Probe::Healthz,
            "/livez" => Probe::Livez,
            "/readyz" => Probe::Readyz,
            "/healthz/ping" | "/livez/ping" | "/readyz/ping" => Probe::Ping,
            _ => return None,
        })
    }
}

pub(crate) struct Probes {
    /// `/readyz` passes when every one of these is ready (none: always).
    readiness: Vec<watch::Receiver<Readiness>>,
    method_not_allowed: PrebuiltStatus,
}

impl Probes {
    pub(crate) fn new(readiness: Vec<watch::Receiver<Readiness>>) -> Self {
        Probes {
            readiness,
            method_not_allowed: PrebuiltStatus::new(&Status::method_not_allowed()),
        }
    }

    pub(crate) fn answer(&self, probe: Probe, method: &Method) -> Response<Body> {
        let head = method == Method::HEAD;
        if !(method == Method::GET || head) {
            return method_not_allowed(&self.method_not_allowed, head);
        }
        match probe {
            Probe::Readyz => match self.not_ready_reasons() {
                None => text(StatusCode::OK, Bytes::from_static(b"ok"), head),
                Some(reasons) => text(StatusCode::SERVICE_UNAVAILABLE, Bytes::from(reasons), head),
            },
            _ => text(StatusCode::OK, Bytes::from_static(b"ok"), head),
        }
    }

    /// `None` when every readiness source is ready; otherwise a body listing what is not,
    /// one `[-]reason` line each, in the shape of Go's `/readyz` failures.
    fn not_ready_reasons(&self) -> Option<String> {
        let mut body: Option<String> = None;
        for receiver in &self.readiness {
            let readiness = receiver.borrow();
            if readiness.ready {
                continue;
            }
            let body = body.get_or_insert_with(String::new);
            body.push_str("[-]");
            body.push_str(if readiness.reason.is_empty() {
                "not ready"
            } else {
                &readiness.reason
            });
            body.push('\n');
        }
        body.map(|mut body| {
            body.push_str("readyz check failed\n");
            body
        })
    }
}
