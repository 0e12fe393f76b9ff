//! Whether delegated authentication and authorization can work, as a watch channel the
//! HTTP layer turns into `/readyz`.
//!
//! Missing RBAC is the classic failure of aggregated API servers: kube-apiserver's
//! availability check runs as `system:masters` (never reviewed), so the APIService looks
//! Available while every HPA request fails. Surfacing it here makes it visible at once.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::apiserver::auth::config::{CONFIGMAP_NAME, CONFIGMAP_NAMESPACE};
use crate::apiserver::seams::Readiness;

/// The reason given when reading the trust ConfigMap is forbidden.
pub const CONFIGMAP_FORBIDDEN: &str = "missing RoleBinding: the agent's service account needs the Role kube-system/extension-apiserver-authentication-reader";
/// The reason given when creating SubjectAccessReviews is forbidden.
pub const SAR_FORBIDDEN: &str = "missing ClusterRoleBinding to system:auth-delegator: cannot create subjectaccessreviews.authorization.k8s.io";
/// The reason given when creating TokenReviews is forbidden.
pub const TOKENREVIEW_FORBIDDEN: &str = "missing ClusterRoleBinding to system:auth-delegator: cannot create tokenreviews.authentication.k8s.io";

/// Where reading the trust ConfigMap stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigMapState {
    /// Not read yet.
    Pending,
    /// Read and applied at least once; later failures keep the applied configuration.
    Loaded,
    /// The API server answered 403.
    Forbidden,
    /// The ConfigMap does not exist (kube-apiserver writes it at start-up; without it
    /// neither the front proxy nor client certificates can be trusted).
    Missing,
    /// The first version read could not be used.
    Invalid(String),
}

/// Which review API a permission problem concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewApi {
    TokenReview,
    SubjectAccessReview,
}

impl ReviewApi {
    /// The resource, for messages.
    pub fn resource(self) -> &'static str {
        match self {
            Self::TokenReview => "tokenreviews.authentication.k8s.io",
            Self::SubjectAccessReview => "subjectaccessreviews.authorization.k8s.io",
        }
    }

    /// The object kind, for messages.
    pub fn kind(self) -> &'static str {
        match self {
            Self::TokenReview => "TokenReview",
            Self::SubjectAccessReview => "SubjectAccessReview",
        }
    }
}

#[derive(Debug)]
struct Conditions {
    configmap: ConfigMapState,
    /// `Some(true)` once creating the review was forbidden, `Some(false)` once it worked.
    token_review_forbidden: Option<bool>,
    sar_forbidden: Option<bool>,
}

impl Conditions {
    fn readiness(&self) -> Readiness {
        let mut reasons: Vec<String> = Vec::new();
        match &self.configmap {
            ConfigMapState::Loaded => {}
            ConfigMapState::Pending => reasons.push(format!(
                "waiting for the first read of ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}"
            )),
            ConfigMapState::Forbidden => reasons.push(CONFIGMAP_FORBIDDEN.to_owned()),
            ConfigMapState::Missing => reasons.push(format!(
                "ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} does not exist: kube-apiserver publishes it when started with --client-ca-file or --requestheader-client-ca-file"
            )),
            ConfigMapState::Invalid(error) => reasons.push(error.clone()),
        }
        if self.token_review_forbidden == Some(true) {
            reasons.push(TOKENREVIEW_FORBIDDEN.to_owned());
        }
        if self.sar_forbidden == Some(true) {
            reasons.push(SAR_FORBIDDEN.to_owned());
        }
        Readiness {
            ready: reasons.is_empty(),
            reason: reasons.join("; "),
        }
    }
}

/// Shared, cheap-to-clone tracker of the conditions above.
#[derive(Debug, Clone)]
pub struct ReadinessTracker {
    conditions: Arc<Mutex<Conditions>>,
    sender: Arc<watch::Sender<Readiness>>,
}

impl Default for ReadinessTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadinessTracker {
    /// Not ready: the ConfigMap has not been read.
    pub fn new() -> Self {
        let conditions = Conditions {
            configmap: ConfigMapState::Pending,
            token_review_forbidden: None,
            sar_forbidden: None,
        };
        let (sender, _) = watch::channel(conditions.readiness());
        Self {
            conditions: Arc::new(Mutex::new(conditions)),
            sender: Arc::new(sender),
        }
    }

    /// A receiver of every change.
    pub fn subscribe(&self) -> watch::Receiver<Readiness> {
        self.sender.subscribe()
    }

    /// The current state.
    pub fn current(&self) -> Readiness {
        self.sender.borrow().clone()
    }

    pub fn configmap_state(&self) -> ConfigMapState {
        self.lock().configmap.clone()
    }

    /// Records the ConfigMap read outcome.
    pub fn set_configmap(&self, state: ConfigMapState) {
        self.update(|c| c.configmap = state);
    }

    /// Records whether creating a review was forbidden (403) or worked.
    pub fn set_review_forbidden(&self, api: ReviewApi, forbidden: bool) {
        self.update(|c| {
            let slot = match api {
                ReviewApi::TokenReview => &mut c.token_review_forbidden,
                ReviewApi::SubjectAccessReview => &mut c.sar_forbidden,
            };
            if forbidden && *slot != Some(true) {
                // Once per transition, not per request.
                tracing::error!(
                    "cannot create {}: {}",
                    api.resource(),
                    match api {
                        ReviewApi::TokenReview => TOKENREVIEW_FORBIDDEN,
                        ReviewApi::SubjectAccessReview => SAR_FORBIDDEN,
                    }
                );
            } else if !forbidden && *slot == Some(true) {
                tracing::info!("creating {} works again", api.resource());
            }
            *slot = Some(forbidden);
        });
    }

    /// Whether a review API was not yet known to work (never tried, or forbidden).
    pub fn review_unverified(&self, api: ReviewApi) -> bool {
        let c = self.lock();
        let slot = match api {
            ReviewApi::TokenReview => c.token_review_forbidden,
            ReviewApi::SubjectAccessReview => c.sar_forbidden,
        };
        slot != Some(false)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conditions> {
        self.conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut Conditions)) {
        let mut conditions = self.lock();
        change(&mut conditions);
        let next = conditions.readiness();
        // Under the lock, so concurrent updates publish in the order they were made.
        self.sender.send_if_modified(|current| {
            if *current == next {
                return false;
            }
            if next.ready {
                tracing::info!("delegated authentication and authorization are ready");
            } else {
                tracing::warn!(reason = %next.reason, "delegated authentication and authorization are not ready");
            }
            *current = next;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_the_configmap_is_read() {
        let tracker = ReadinessTracker::new();
        let readiness = tracker.current();
        assert!(!readiness.ready);
        assert_eq!(
            readiness.reason,
            "waiting for the first read of ConfigMap kube-system/extension-apiserver-authentication"
        );
        tracker.set_configmap(ConfigMapState::Loaded);
        assert_eq!(
            tracker.current(),
            Readiness {
                ready: true,
                reason: String::new()
            }
        );
    }

    #[test]
    fn exact_messages_for_missing_rbac() {
        let tracker = ReadinessTracker::new();
        let mut rx = tracker.subscribe();
        tracker.set_configmap(ConfigMapState::Forbidden);
        assert!(rx.has_changed().expect("sender alive"));
        assert_eq!(
            rx.borrow_and_update().reason,
            "missing RoleBinding: the agent's service account needs the Role kube-system/extension-apiserver-authentication-reader"
        );
        tracker.set_configmap(ConfigMapState::Loaded);
        tracker.set_review_forbidden(ReviewApi::SubjectAccessReview, true);
        assert_eq!(
            tracker.current().reason,
            "missing ClusterRoleBinding to system:auth-delegator: cannot create subjectaccessreviews.authorization.k8s.io"
        );
        tracker.set_review_forbidden(ReviewApi::TokenReview, true);
        assert_eq!(
            tracker.current().reason,
            "missing ClusterRoleBinding to system:auth-delegator: cannot create tokenreviews.authentication.k8s.io; missing ClusterRoleBinding to system:auth-delegator: cannot create subjectaccessreviews.authorization.k8s.io"
        );
        tracker.set_review_forbidden(ReviewApi::SubjectAccessReview, false);
        tracker.set_review_forbidden(ReviewApi::TokenReview, false);
        assert!(tracker.current().ready);
        assert!(!tracker.review_unverified(ReviewApi::TokenReview));
    }

    #[test]
    fn configmap_states() {
        let tracker = ReadinessTracker::new();
        tracker.set_configmap(ConfigMapState::Invalid("bad".into()));
        assert_eq!(tracker.current().reason, "bad");
        tracker.set_configmap(ConfigMapState::Missing);
        assert_eq!(
            tracker.current().reason,
            "ConfigMap kube-system/extension-apiserver-authentication does not exist: kube-apiserver publishes it when started with --client-ca-file or --requestheader-client-ca-file"
        );
        tracker.set_configmap(ConfigMapState::Loaded);
        assert_eq!(tracker.configmap_state(), ConfigMapState::Loaded);
        assert!(tracker.current().ready);
        // Forbidden after a load turns not-ready: the next relist will fail too.
        tracker.set_configmap(ConfigMapState::Forbidden);
        assert!(!tracker.current().ready);
    }

    #[test]
    fn unchanged_state_sends_nothing() {
        let tracker = ReadinessTracker::new();
        tracker.set_configmap(ConfigMapState::Loaded);
        let mut rx = tracker.subscribe();
        rx.borrow_and_update();
        tracker.set_configmap(ConfigMapState::Loaded);
        tracker.set_review_forbidden(ReviewApi::TokenReview, false);
        assert!(!rx.has_changed().expect("sender alive"));
    }
}
