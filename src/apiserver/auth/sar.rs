//! Delegated authorization: a SubjectAccessReview (`authorization.k8s.io/v1`) per request,
//! with allow and deny decisions cached (10 s each in kube), `system:masters` and the
//! probe paths allowed without asking (kube's `AlwaysAllowGroups` / `AlwaysAllowPaths`).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use moka::future::Cache;
use moka::{Equivalent, Expiry};

use crate::apiserver::auth::ReviewError;
use crate::apiserver::auth::readiness::{ReadinessTracker, ReviewApi};
use crate::apiserver::seams::{Answer, Authorizer, Decision, RequestAttributes, UserInfo};

/// Members are allowed everything without a review.
pub(crate) const PRIVILEGED_GROUP: &str = "system:masters";
/// Non-resource paths allowed to everyone without a review.
pub(crate) const ALWAYS_ALLOW_PATHS: &[&str] = &["/healthz", "/readyz", "/livez"];

/// What a SubjectAccessReview concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Denied, or no authorizer had an opinion (both are a 403); the reviewer's reason.
    Deny(String),
}

/// Decides access for a user. Implemented by [`KubeAccessReviewer`] (the API server).
pub trait AccessReviewer: Send + Sync + 'static {
    fn review<'a>(
        &'a self,
        user: &'a UserInfo,
        attributes: &'a RequestAttributes<'a>,
    ) -> BoxFuture<'a, Result<Verdict, ReviewError>>;
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

/// The SubjectAccessReview for one request: the full identity (user, UID, groups, extra)
/// and either resource or non-resource attributes. Empty strings are left out, as Go's
/// `omitempty` does (the core group and cluster scope are "").
pub(crate) fn subject_access_review(
    user: &UserInfo,
    attributes: &RequestAttributes<'_>,
) -> SubjectAccessReview {
    let (resource_attributes, non_resource_attributes) = match attributes {
        RequestAttributes::Resource {
            verb,
            group,
            version,
            resource,
            namespace,
        } => (
            Some(ResourceAttributes {
                verb: non_empty(verb),
                group: non_empty(group),
                version: non_empty(version),
                resource: non_empty(resource),
                namespace: non_empty(namespace),
                ..Default::default()
            }),
            None,
        ),
        RequestAttributes::NonResource { verb, path } => (
            None,
            Some(NonResourceAttributes {
                verb: non_empty(verb),
                path: non_empty(path),
            }),
        ),
    };
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: non_empty(&user.name),
            uid: non_empty(&user.uid),
            groups: (!user.groups.is_empty()).then(|| user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes,
            non_resource_attributes,
        },
        ..Default::default()
    }
}

/// Reads the API server's answer.
pub(crate) fn verdict(review: &SubjectAccessReview) -> Result<Verdict, ReviewError> {
    let status = review.status.as_ref().ok_or(ReviewError::NoStatus {
        api: ReviewApi::SubjectAccessReview,
    })?;
    if let Some(error) = status.evaluation_error.as_deref().filter(|e| !e.is_empty()) {
        // Partial failures of some authorizer; the verdict still stands, as in kube.
        tracing::debug!(error, "SubjectAccessReview evaluation error");
    }
    Ok(if status.allowed {
        Verdict::Allow
    } else {
        Verdict::Deny(status.reason.clone().unwrap_or_default())
    })
}

/// Creates SubjectAccessReviews through the API server.
pub struct KubeAccessReviewer {
    api: Api<SubjectAccessReview>,
    timeout: Duration,
    readiness: ReadinessTracker,
    calls: AtomicU64,
}

impl std::fmt::Debug for KubeAccessReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAccessReviewer")
            .field("timeout", &self.timeout)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

impl KubeAccessReviewer {
    /// `timeout` bounds each review, retries included. A 403 (or the first success after
    /// one) is reported to `readiness`.
    pub fn new(client: kube::Client, timeout: Duration, readiness: ReadinessTracker) -> Self {
        Self {
            api: Api::all(client),
            timeout,
            readiness,
            calls: AtomicU64::new(0),
        }
    }

    /// SubjectAccessReviews created for requests so far (probes excluded).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    async fn create(
        &self,
        review: &SubjectAccessReview,
    ) -> Result<SubjectAccessReview, ReviewError> {
        let result = super::create_review(
            &self.api,
            review,
            ReviewApi::SubjectAccessReview,
            self.timeout,
        )
        .await;
        match &result {
            Ok(_) => self
                .readiness
                .set_review_forbidden(ReviewApi::SubjectAccessReview, false),
            Err(ReviewError::Forbidden { .. }) => self
                .readiness
                .set_review_forbidden(ReviewApi::SubjectAccessReview, true),
            Err(_) => {}
        }
        result
    }

    /// Checks that this agent may create SubjectAccessReviews, with a harmless question
    /// (may the anonymous user GET /healthz).
    pub async fn probe(&self) -> Result<(), ReviewError> {
        let attributes = RequestAttributes::NonResource {
            verb: "get".into(),
            path: "/healthz".into(),
        };
        self.create(&subject_access_review(&UserInfo::anonymous(), &attributes))
            .await
            .map(|_| ())
    }
}

impl AccessReviewer for KubeAccessReviewer {
    fn review<'a>(
        &'a self,
        user: &'a UserInfo,
        attributes: &'a RequestAttributes<'a>,
    ) -> BoxFuture<'a, Result<Verdict, ReviewError>> {
        async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            verdict(
                &self
                    .create(&subject_access_review(user, attributes))
                    .await?,
            )
        }
        .boxed()
    }
}

/// Everything a review depends on; two requests with equal keys get the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReviewKey {
    user: UserInfo,
    attributes: RequestAttributes<'static>,
}

/// A request's [`ReviewKey`] borrowed from it, to look the cache up without copying the
/// identity and attributes: both hash as the same sequence of values.
#[derive(Clone, Copy)]
struct ReviewQuery<'k> {
    user: &'k UserInfo,
    attributes: &'k RequestAttributes<'k>,
}

impl Hash for ReviewKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        ReviewQuery {
            user: &self.user,
            attributes: &self.attributes,
        }
        .hash(state);
    }
}

impl Hash for ReviewQuery<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.user.hash(state);
        self.attributes.hash(state);
    }
}

impl Equivalent<ReviewKey> for ReviewQuery<'_> {
    fn equivalent(&self, key: &ReviewKey) -> bool {
        *self.user == key.user && *self.attributes == key.attributes
    }
}

impl ReviewQuery<'_> {
    fn to_key(self) -> ReviewKey {
        ReviewKey {
            user: self.user.clone(),
            attributes: self.attributes.clone().into_owned(),
        }
    }
}

/// Separate lifetimes for allow and deny entries.
struct VerdictExpiry {
    allow: Duration,
    deny: Duration,
}

impl Expiry<ReviewKey, Verdict> for VerdictExpiry {
    fn expire_after_create(&self, _: &ReviewKey, value: &Verdict, _: Instant) -> Option<Duration> {
        Some(match value {
            Verdict::Allow => self.allow,
            Verdict::Deny(_) => self.deny,
        })
    }
}

/// The [`Authorizer`]: short-circuits, then a bounded cache in front of a reviewer.
/// Errors are not cached; concurrent identical reviews share one API call.
pub struct CachingAuthorizer<R> {
    inner: R,
    cache: Cache<ReviewKey, Verdict>,
}

impl<R> std::fmt::Debug for CachingAuthorizer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingAuthorizer")
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl<R: AccessReviewer> CachingAuthorizer<R> {
    pub fn new(inner: R, allow_ttl: Duration, deny_ttl: Duration, capacity: u64) -> Self {
        Self {
            inner,
            cache: Cache::builder()
                .max_capacity(capacity)
                .expire_after(VerdictExpiry {
                    allow: allow_ttl,
                    deny: deny_ttl,
                })
                .build(),
        }
    }

    /// The wrapped reviewer.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// The decision for one request.
    pub async fn decide(&self, user: &UserInfo, attributes: &RequestAttributes<'_>) -> Decision {
        if let Some(decision) = self.decide_now(user, attributes) {
            return decision;
        }
        self.review(user, attributes).await
    }

    /// The decision when it needs no review: a short-circuit, or a cached verdict.
    fn decide_now(&self, user: &UserInfo, attributes: &RequestAttributes<'_>) -> Option<Decision> {
        if user.groups.iter().any(|g| g == PRIVILEGED_GROUP) {
            return Some(Decision::Allow);
        }
        if let RequestAttributes::NonResource { path, .. } = attributes
            && ALWAYS_ALLOW_PATHS.contains(&path.as_ref())
        {
            return Some(Decision::Allow);
        }
        let query = ReviewQuery { user, attributes };
        // moka's lookup is a future only because it may do housekeeping; if that has to
        // wait, the request takes the path of a miss, which finds the entry all the same.
        let verdict = self.cache.get(&query).now_or_never().flatten()?;
        Some(decision(Ok(verdict), user))
    }

    /// The cached verdict, or a review shared with concurrent identical requests.
    async fn review(&self, user: &UserInfo, attributes: &RequestAttributes<'_>) -> Decision {
        let key = ReviewQuery { user, attributes }.to_key();
        let verdict = self
            .cache
            .try_get_with(key, self.inner.review(user, attributes))
            .await;
        decision(verdict.map_err(|e| (*e).clone()), user)
    }
}

fn decision(verdict: Result<Verdict, ReviewError>, user: &UserInfo) -> Decision {
    match verdict {
        Ok(Verdict::Allow) => Decision::Allow,
        Ok(Verdict::Deny(reason)) => Decision::Deny(reason),
        Err(error) => {
            tracing::warn!(%error, user = %user.name, "authorization failed");
            Decision::Error(error.to_string())
        }
    }
}

impl<R: AccessReviewer> Authorizer for CachingAuthorizer<R> {
    fn authorize<'a>(
        &'a self,
        user: &'a UserInfo,
        attributes: &'a RequestAttributes<'a>,
    ) -> Answer<'a, Decision> {
        match self.decide_now(user, attributes) {
            Some(decision) => Answer::ready(decision),
            None => Answer::later(move || self.review(user, attributes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::Mutex;

    use k8s_openapi::api::authorization::v1::SubjectAccessReviewStatus;

    use super::*;

    fn hpa() -> UserInfo {
        UserInfo {
            name: "system:serviceaccount:kube-system:horizontal-pod-autoscaler".into(),
            uid: String::new(),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:kube-system".into(),
                "system:authenticated".into(),
            ],
            extra: BTreeMap::new(),
        }
    }

    fn metric(resource: &str) -> RequestAttributes<'_> {
        RequestAttributes::Resource {
            verb: "list".into(),
            group: "external.metrics.k8s.io".into(),
            version: "v1beta1".into(),
            resource: resource.into(),
            namespace: "default".into(),
        }
    }

    #[test]
    fn resource_review_body() {
        let json = serde_json::to_value(subject_access_review(&hpa(), &metric("queue_depth")))
            .expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "metadata": {},
                "spec": {
                    "user": "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
                    "groups": [
                        "system:serviceaccounts",
                        "system:serviceaccounts:kube-system",
                        "system:authenticated"
                    ],
                    "resourceAttributes": {
                        "verb": "list",
                        "group": "external.metrics.k8s.io",
                        "version": "v1beta1",
                        "resource": "queue_depth",
                        "namespace": "default"
                    }
                }
            })
        );
    }

    #[test]
    fn non_resource_review_body_with_uid_and_extra() {
        let user = UserInfo {
            name: "alice".into(),
            uid: "u-1".into(),
            groups: vec![],
            extra: BTreeMap::from([("scopes".to_owned(), vec!["a".to_owned(), "b".to_owned()])]),
        };
        let attributes = RequestAttributes::NonResource {
            verb: "get".into(),
            path: "/apis/external.metrics.k8s.io/v1beta1".into(),
        };
        let json = serde_json::to_value(subject_access_review(&user, &attributes)).expect("json");
        assert_eq!(
            json["spec"],
            serde_json::json!({
                "user": "alice",
                "uid": "u-1",
                "extra": { "scopes": ["a", "b"] },
                "nonResourceAttributes": {
                    "verb": "get",
                    "path": "/apis/external.metrics.k8s.io/v1beta1"
                }
            })
        );
    }

    #[test]
    fn verdicts() {
        let answered = |status: SubjectAccessReviewStatus| SubjectAccessReview {
            status: Some(status),
            ..Default::default()
        };
        let cases = [
            (
                SubjectAccessReviewStatus {
                    allowed: true,
                    reason: Some("RBAC: allowed by ClusterRoleBinding".into()),
                    ..Default::default()
                },
                Verdict::Allow,
            ),
            (
                SubjectAccessReviewStatus {
                    allowed: false,
                    denied: Some(true),
                    reason: Some("denied by policy".into()),
                    ..Default::default()
                },
                Verdict::Deny("denied by policy".into()),
            ),
            // No opinion is a deny too, without a reason.
            (
                SubjectAccessReviewStatus::default(),
                Verdict::Deny(String::new()),
            ),
            (
                SubjectAccessReviewStatus {
                    allowed: false,
                    evaluation_error: Some("webhook down".into()),
                    ..Default::default()
                },
                Verdict::Deny(String::new()),
            ),
        ];
        for (status, expected) in cases {
            assert_eq!(verdict(&answered(status)).expect("status"), expected);
        }
        assert!(matches!(
            verdict(&SubjectAccessReview::default()),
            Err(ReviewError::NoStatus { .. })
        ));
    }

    /// Allows exactly the users in `allowed`; records every review it is asked for.
    struct Fake {
        allowed: Vec<String>,
        fail: bool,
        asked: Asked,
    }

    impl AccessReviewer for Fake {
        fn review<'a>(
            &'a self,
            user: &'a UserInfo,
            attributes: &'a RequestAttributes<'a>,
        ) -> BoxFuture<'a, Result<Verdict, ReviewError>> {
            async move {
                self.asked
                    .lock()
                    .expect("lock")
                    .push((user.name.clone(), attributes.clone().into_owned()));
                tokio::time::sleep(Duration::from_millis(20)).await;
                if self.fail {
                    return Err(ReviewError::Api {
                        api: ReviewApi::SubjectAccessReview,
                        code: 500,
                        message: "etcdserver: request timed out".into(),
                    });
                }
                Ok(if self.allowed.contains(&user.name) {
                    Verdict::Allow
                } else {
                    Verdict::Deny(format!("{} is not bound", user.name))
                })
            }
            .boxed()
        }
    }

    type Asked = Arc<Mutex<Vec<(String, RequestAttributes<'static>)>>>;

    fn authorizer(fail: bool, allow: Duration, deny: Duration) -> (CachingAuthorizer<Fake>, Asked) {
        let asked: Asked = Arc::default();
        let fake = Fake {
            allowed: vec![hpa().name],
            fail,
            asked: Arc::clone(&asked),
        };
        (CachingAuthorizer::new(fake, allow, deny, 1000), asked)
    }

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..Default::default()
        }
    }

    const LONG: Duration = Duration::from_secs(600);

    #[tokio::test]
    async fn allow_and_deny_are_cached() {
        let (authz, asked) = authorizer(false, LONG, LONG);
        for _ in 0..3 {
            assert_eq!(authz.decide(&hpa(), &metric("m")).await, Decision::Allow);
            assert_eq!(
                authz.decide(&user("bob", &[]), &metric("m")).await,
                Decision::Deny("bob is not bound".into())
            );
        }
        assert_eq!(asked.lock().expect("lock").len(), 2);
        // Another metric, another namespace or other groups are other questions.
        authz.decide(&hpa(), &metric("other")).await;
        authz.decide(&user("bob", &["g"]), &metric("m")).await;
        assert_eq!(asked.lock().expect("lock").len(), 4);
    }

    #[tokio::test]
    async fn a_cached_verdict_is_answered_at_once_for_equal_borrowed_attributes() {
        let (authz, asked) = authorizer(false, LONG, LONG);
        let owned = metric("m");
        assert!(matches!(authz.authorize(&hpa(), &owned), Answer::Later(_)));
        assert_eq!(
            authz.authorize(&hpa(), &owned).wait().await,
            Decision::Allow
        );

        // The same question asked by another request, its attributes borrowed from it.
        let resource = String::from("m");
        let namespace = String::from("default");
        let borrowed = RequestAttributes::Resource {
            verb: Cow::Borrowed("list"),
            group: Cow::Borrowed("external.metrics.k8s.io"),
            version: Cow::Borrowed("v1beta1"),
            resource: Cow::Borrowed(&resource),
            namespace: Cow::Borrowed(&namespace),
        };
        assert!(matches!(
            authz.authorize(&hpa(), &borrowed),
            Answer::Ready(Decision::Allow)
        ));
        assert_eq!(asked.lock().expect("lock").len(), 1);

        // Another user, another group or another metric is not a hit.
        assert!(matches!(
            authz.authorize(&user("bob", &[]), &borrowed),
            Answer::Later(_)
        ));
        let mut other_groups = hpa();
        other_groups.groups.pop();
        assert!(matches!(
            authz.authorize(&other_groups, &borrowed),
            Answer::Later(_)
        ));
        assert!(matches!(
            authz.authorize(&hpa(), &metric("n")),
            Answer::Later(_)
        ));
    }

    #[test]
    fn borrowed_and_owned_keys_hash_and_compare_alike() {
        use std::hash::BuildHasher;
        let hasher = std::hash::RandomState::new();
        let extra = UserInfo {
            extra: BTreeMap::from([("scopes".to_owned(), vec!["a".to_owned()])]),
            uid: "u-1".into(),
            ..user("alice", &["devs"])
        };
        let non_resource = RequestAttributes::NonResource {
            verb: "get".into(),
            path: "/apis".into(),
        };
        for (u, attributes) in [
            (hpa(), metric("m")),
            (extra.clone(), metric("m")),
            (extra, non_resource.clone()),
            (user("bob", &[]), non_resource),
        ] {
            let query = ReviewQuery {
                user: &u,
                attributes: &attributes,
            };
            let key = query.to_key();
            assert_eq!(hasher.hash_one(query), hasher.hash_one(&key));
            assert!(query.equivalent(&key));
        }
        let (a, b) = (metric("m"), metric("n"));
        let alice = user("alice", &[]);
        let key = ReviewQuery {
            user: &alice,
            attributes: &a,
        }
        .to_key();
        assert!(
            !ReviewQuery {
                user: &alice,
                attributes: &b
            }
            .equivalent(&key)
        );
    }

    #[tokio::test]
    async fn deny_and_allow_expire_separately() {
        let (authz, asked) = authorizer(false, LONG, Duration::from_millis(30));
        authz.decide(&hpa(), &metric("m")).await;
        authz.decide(&user("bob", &[]), &metric("m")).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let asked_bob = asked
                .lock()
                .expect("lock")
                .iter()
                .filter(|(name, _)| name == "bob")
                .count();
            if asked_bob >= 2 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "deny never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
            authz.decide(&user("bob", &[]), &metric("m")).await;
            authz.decide(&hpa(), &metric("m")).await;
        }
        let asked_hpa = asked
            .lock()
            .expect("lock")
            .iter()
            .filter(|(name, _)| *name == hpa().name)
            .count();
        assert_eq!(asked_hpa, 1, "the allow entry lives longer");
    }

    #[tokio::test]
    async fn masters_and_probe_paths_skip_the_review() {
        let (authz, asked) = authorizer(true, LONG, LONG);
        let aggregator = user("system:kube-aggregator", &["system:masters"]);
        assert_eq!(
            authz.decide(&aggregator, &metric("m")).await,
            Decision::Allow
        );
        let healthz = RequestAttributes::NonResource {
            verb: "get".into(),
            path: "/healthz".into(),
        };
        assert_eq!(
            authz.decide(&UserInfo::anonymous(), &healthz).await,
            Decision::Allow
        );
        assert!(asked.lock().expect("lock").is_empty());
        // A sub-path is not the probe path.
        let sub = RequestAttributes::NonResource {
            verb: "get".into(),
            path: "/healthz/ping".into(),
        };
        assert!(matches!(
            authz.decide(&UserInfo::anonymous(), &sub).await,
            Decision::Error(_)
        ));
    }

    #[tokio::test]
    async fn errors_are_decisions_and_not_cached() {
        let (authz, asked) = authorizer(true, LONG, LONG);
        for _ in 0..2 {
            let Decision::Error(message) = authz.decide(&hpa(), &metric("m")).await else {
                panic!("expected an error");
            };
            assert!(
                message.contains("etcdserver: request timed out"),
                "{message}"
            );
        }
        assert_eq!(asked.lock().expect("lock").len(), 2);
    }

    #[tokio::test]
    async fn concurrent_identical_requests_share_a_review() {
        let (authz, asked) = authorizer(false, LONG, LONG);
        let hpa = hpa();
        let attributes = metric("m");
        let decisions =
            futures::future::join_all((0..10).map(|_| authz.authorize(&hpa, &attributes).wait()))
                .await;
        assert!(decisions.iter().all(|d| *d == Decision::Allow));
        assert_eq!(asked.lock().expect("lock").len(), 1);
    }
}
