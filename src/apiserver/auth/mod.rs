//! Delegated authentication and authorization, as kube's generic API server does it for
//! aggregated API servers:
//!
//! * trust comes from ConfigMap `kube-system/extension-apiserver-authentication`, watched so
//!   a front-proxy CA rotation needs no restart ([`config`], [`watcher`]);
//! * identity comes from the front proxy's headers, a client certificate, or a bearer token
//!   checked with a TokenReview ([`requestheader`], [`tokenreview`]);
//! * permission comes from a SubjectAccessReview ([`sar`]);
//! * missing RBAC shows up as a readiness reason, not only as failing HPAs ([`readiness`]).
//!
//! [`DelegatingAuth`] ties these together and implements the HTTP layer's
//! [`Authenticator`] and [`Authorizer`] seams.

pub mod config;
pub mod readiness;
pub mod requestheader;
pub(crate) mod sar;
pub(crate) mod tokenreview;
pub mod watcher;

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use kube::Api;
use kube::api::PostParams;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::apiserver::seams::{
    Answer, Authentication, Authenticator, Authorizer, Decision, Readiness, RequestAttributes,
    UserInfo,
};
use crate::error::Cause;
use crate::tls::{ClientCaHandle, PeerIdentity};

pub use config::{AuthConfig, ConfigError, TrustBundles};
pub use readiness::{ConfigMapState, ReadinessTracker, ReviewApi};
pub use requestheader::CertOutcome;
pub use sar::{AccessReviewer, CachingAuthorizer, KubeAccessReviewer, Verdict};
pub use tokenreview::{CachedTokenReviewer, KubeTokenReviewer, TokenOutcome, TokenReviewer};

/// Why a TokenReview or SubjectAccessReview could not be had. Never contains a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// 403: the agent lacks the `system:auth-delegator` binding.
    #[error("creating a {} is forbidden: {message}", api.kind())]
    Forbidden { api: ReviewApi, message: String },
    /// Any other answer of the API server than success.
    #[error("the API server refused the {} ({code}): {message}", api.kind())]
    Api {
        api: ReviewApi,
        code: u16,
        message: String,
    },
    /// The API server could not be reached or its answer not read.
    #[error("cannot create a {}: {cause}", api.kind())]
    Transport {
        api: ReviewApi,
        #[source]
        cause: Cause,
    },
    #[error("the API server did not answer the {} within {timeout:?}", api.kind())]
    Timeout { api: ReviewApi, timeout: Duration },
    #[error("the API server answered the {} without a status", api.kind())]
    NoStatus { api: ReviewApi },
}

impl ReviewError {
    /// Worth another try within the same request.
    fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Api { code, .. } => *code == 429 || *code >= 500,
            Self::Forbidden { .. } | Self::Timeout { .. } | Self::NoStatus { .. } => false,
        }
    }

    fn from_kube(api: ReviewApi, error: kube::Error) -> Self {
        match error {
            kube::Error::Api(status) if status.code == 403 => Self::Forbidden {
                api,
                message: status.message,
            },
            kube::Error::Api(status) => Self::Api {
                api,
                code: status.code,
                message: status.message,
            },
            other => Self::Transport {
                api,
                cause: Cause::new(other),
            },
        }
    }
}

/// How many times a review is tried when the API server is briefly unavailable.
const REVIEW_ATTEMPTS: u32 = 3;

/// Creates a review object, retrying transient failures with a short backoff (kube's
/// webhook clients retry too), all within `timeout`.
async fn create_review<K>(
    api: &Api<K>,
    review: &K,
    which: ReviewApi,
    timeout: Duration,
) -> Result<K, ReviewError>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let attempts = async {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match api.create(&PostParams::default(), review).await {
                Ok(created) => return Ok(created),
                Err(error) => {
                    let error = ReviewError::from_kube(which, error);
                    if attempt >= REVIEW_ATTEMPTS || !error.is_transient() {
                        return Err(error);
                    }
                    tracing::debug!(%error, attempt, "retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
            }
        }
    };
    tokio::time::timeout(timeout, attempts)
        .await
        .unwrap_or(Err(ReviewError::Timeout {
            api: which,
            timeout,
        }))
}

/// Tunables; the defaults are kube's.
#[derive(Debug, Clone)]
pub struct AuthOptions {
    /// How long TokenReview outcomes (valid and invalid) are cached.
    pub token_cache_ttl: Duration,
    /// How long allowed SubjectAccessReview decisions are cached.
    pub allow_cache_ttl: Duration,
    /// How long denied SubjectAccessReview decisions are cached.
    pub deny_cache_ttl: Duration,
    /// Entries per cache (tokens, decisions); least recently used go first.
    pub cache_capacity: u64,
    /// Bound on one TokenReview or SubjectAccessReview, retries included.
    pub review_timeout: Duration,
    /// How often RBAC for the review APIs is re-checked while it is missing or unknown.
    pub probe_interval: Duration,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self {
            token_cache_ttl: Duration::from_secs(10),
            allow_cache_ttl: Duration::from_secs(10),
            deny_cache_ttl: Duration::from_secs(10),
            cache_capacity: 8192,
            review_timeout: Duration::from_secs(10),
            probe_interval: Duration::from_secs(30),
        }
    }
}

/// The trust configuration in force.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trust {
    pub(crate) config: AuthConfig,
    pub(crate) requestheader_within_client_ca: bool,
    /// Whether a ConfigMap was ever applied (before that, `config` is empty).
    pub(crate) loaded: bool,
}

/// The full authenticator chain for one request: certificate authenticators, then the
/// bearer token, then anonymous (kube's delegating authenticator with anonymous enabled).
pub fn authenticate_request<'a, T: TokenReviewer + ?Sized>(
    peer: &PeerIdentity,
    headers: &'a http::HeaderMap,
    config: &AuthConfig,
    requestheader_within_client_ca: bool,
    tokens: &'a T,
) -> Answer<'a, Authentication> {
    let errors = match requestheader::authenticate_certificate(
        peer,
        headers,
        config,
        requestheader_within_client_ca,
    ) {
        CertOutcome::User(user) => {
            return Answer::ready(Authentication::User(Arc::new(
                requestheader::with_authenticated_group(user),
            )));
        }
        CertOutcome::NotAuthenticated { errors } => errors,
    };
    let Some(token) = requestheader::bearer_token(headers) else {
        return Answer::ready(without_token(errors));
    };
    tokens
        .review(token)
        .map(move |outcome| with_token_outcome(outcome, errors))
}

/// The chain's conclusion once the token's review is known; `errors` are the certificate
/// authenticators'.
fn with_token_outcome(
    outcome: Result<TokenOutcome, ReviewError>,
    mut errors: Vec<String>,
) -> Authentication {
    match outcome {
        Ok(TokenOutcome::Authenticated(user)) => {
            Authentication::User(requestheader::shared_with_authenticated_group(user))
        }
        Ok(TokenOutcome::Rejected(reason)) => {
            errors.push(reason);
            without_token(errors)
        }
        // The token may well be valid: not a 401 but "could not ask".
        Err(error) => Authentication::Error(error.to_string()),
    }
}

/// Anonymous, unless an authenticator rejected what the request presented.
fn without_token(errors: Vec<String>) -> Authentication {
    if errors.is_empty() {
        Authentication::User(Arc::new(UserInfo::anonymous()))
    } else {
        Authentication::Rejected(requestheader::aggregate_errors(&errors))
    }
}

/// Counters for tests and telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthStats {
    /// TokenReviews created for requests (cache misses).
    pub token_reviews: u64,
    /// SubjectAccessReviews created for requests (cache misses).
    pub subject_access_reviews: u64,
    /// ConfigMap versions that changed the configuration in force.
    pub configmap_applied: u64,
    /// ConfigMap versions that could not be used (the previous configuration stayed).
    pub configmap_rejected: u64,
}

/// Delegated authentication and authorization against the cluster's API server.
///
/// Create it with [`new`](Self::new), hand it to the HTTP layer as both
/// [`Authenticator`] and [`Authorizer`], and [`spawn`](Self::spawn) its background work
/// (ConfigMap watch, RBAC probes). Until the ConfigMap was read, no client certificate is
/// trusted and [`readiness`](Self::readiness) says why.
pub struct DelegatingAuth {
    client: kube::Client,
    ca: ClientCaHandle,
    trust: RwLock<Arc<Trust>>,
    tokens: CachedTokenReviewer<KubeTokenReviewer>,
    authorizer: CachingAuthorizer<KubeAccessReviewer>,
    readiness: ReadinessTracker,
    options: AuthOptions,
    configmap_applied: AtomicU64,
    configmap_rejected: AtomicU64,
}

impl Debug for DelegatingAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelegatingAuth")
            .field("ca", &self.ca)
            .field("readiness", &self.readiness.current())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl DelegatingAuth {
    /// `ca` is the handle the TLS server verifies client certificates with; its bundles are
    /// replaced from the ConfigMap.
    pub fn new(client: kube::Client, ca: ClientCaHandle, options: AuthOptions) -> Arc<Self> {
        let readiness = ReadinessTracker::new();
        let tokens = CachedTokenReviewer::new(
            KubeTokenReviewer::new(client.clone(), options.review_timeout, readiness.clone()),
            options.token_cache_ttl,
            options.cache_capacity,
        );
        let authorizer = CachingAuthorizer::new(
            KubeAccessReviewer::new(client.clone(), options.review_timeout, readiness.clone()),
            options.allow_cache_ttl,
            options.deny_cache_ttl,
            options.cache_capacity,
        );
        Arc::new(Self {
            client,
            ca,
            trust: RwLock::new(Arc::new(Trust::default())),
            tokens,
            authorizer,
            readiness,
            options,
            configmap_applied: AtomicU64::new(0),
            configmap_rejected: AtomicU64::new(0),
        })
    }

    /// Runs the ConfigMap watch and the RBAC probes until `shutdown`; both retry on their
    /// own, so the task only ends with `shutdown`.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(
            async move {
                tokio::join!(
                    watcher::watch_configmap(&this, shutdown.clone()),
                    this.probe_permissions(shutdown.clone()),
                );
            }
            .instrument(tracing::info_span!("delegated-auth")),
        )
    }

    /// Readiness of delegated auth; see [`readiness`] for the reasons it gives.
    pub fn readiness(&self) -> watch::Receiver<Readiness> {
        self.readiness.subscribe()
    }

    /// The tracker behind [`readiness`](Self::readiness).
    pub fn readiness_tracker(&self) -> &ReadinessTracker {
        &self.readiness
    }

    /// The configuration in force (empty until the ConfigMap was read).
    pub fn config(&self) -> AuthConfig {
        self.trust().config.clone()
    }

    /// The client CA handle this instance updates.
    pub fn client_ca(&self) -> &ClientCaHandle {
        &self.ca
    }

    pub fn stats(&self) -> AuthStats {
        AuthStats {
            token_reviews: self.tokens.inner().calls(),
            subject_access_reviews: self.authorizer.inner().calls(),
            configmap_applied: self.configmap_applied.load(Ordering::Relaxed),
            configmap_rejected: self.configmap_rejected.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn kube_client(&self) -> &kube::Client {
        &self.client
    }

    pub(crate) fn trust(&self) -> Arc<Trust> {
        Arc::clone(&self.trust.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn set_trust(&self, trust: Trust) {
        *self.trust.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(trust);
        self.configmap_applied.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_rejected_configmap(&self) {
        self.configmap_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Creates a harmless TokenReview and SubjectAccessReview whenever permission for them
    /// is unknown or was refused, so missing RBAC shows before the first HPA request and
    /// clears once fixed even without traffic.
    async fn probe_permissions(&self, shutdown: CancellationToken) {
        loop {
            if self.readiness.review_unverified(ReviewApi::TokenReview)
                && let Err(error) = self.tokens.inner().probe().await
                && !matches!(error, ReviewError::Forbidden { .. })
            {
                tracing::warn!(%error, "cannot check permission to create TokenReviews");
            }
            if self
                .readiness
                .review_unverified(ReviewApi::SubjectAccessReview)
                && let Err(error) = self.authorizer.inner().probe().await
                && !matches!(error, ReviewError::Forbidden { .. })
            {
                tracing::warn!(%error, "cannot check permission to create SubjectAccessReviews");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.options.probe_interval) => {}
            }
        }
    }
}

impl Authenticator for DelegatingAuth {
    fn authenticate<'a>(
        &'a self,
        peer: &'a PeerIdentity,
        headers: &'a http::HeaderMap,
    ) -> Answer<'a, Authentication> {
        let trust = self.trust();
        authenticate_request(
            peer,
            headers,
            &trust.config,
            trust.requestheader_within_client_ca,
            &self.tokens,
        )
    }
}

impl Authorizer for DelegatingAuth {
    fn authorize<'a>(
        &'a self,
        user: &'a UserInfo,
        attributes: &'a RequestAttributes<'a>,
    ) -> Answer<'a, Decision> {
        self.authorizer.authorize(user, attributes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{HeaderMap, HeaderValue};

    use super::*;
    use crate::apiserver::auth::config::{CLIENT_CA_BUNDLE, REQUESTHEADER_BUNDLE};

    #[test]
    fn defaults_are_kubes() {
        // k8s.io/apiserver's DelegatingAuthenticationOptions (CacheTTL 10 s) and
        // DelegatingAuthorizationOptions (AllowCacheTTL and DenyCacheTTL 10 s).
        let o = AuthOptions::default();
        let secs = Duration::from_secs;
        assert_eq!(
            (o.token_cache_ttl, o.allow_cache_ttl, o.deny_cache_ttl),
            (secs(10), secs(10), secs(10))
        );
        assert_eq!(o.review_timeout, secs(10));
        assert!(o.cache_capacity >= 1024, "{}", o.cache_capacity);
    }

    /// "good" is alice, "down" fails, anything else is invalid.
    #[derive(Default)]
    struct Tokens {
        calls: AtomicUsize,
    }

    impl TokenReviewer for Tokens {
        fn review<'a>(&'a self, token: &'a str) -> Answer<'a, Result<TokenOutcome, ReviewError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let outcome = match token {
                "good" => Ok(TokenOutcome::Authenticated(Arc::new(UserInfo {
                    name: "alice".into(),
                    groups: vec!["devs".into()],
                    ..Default::default()
                }))),
                "down" => Err(ReviewError::Transport {
                    api: ReviewApi::TokenReview,
                    cause: Cause::msg("connection refused"),
                }),
                _ => Ok(TokenOutcome::Rejected("invalid bearer token".into())),
            };
            Answer::ready(outcome)
        }
    }

    fn kubeadm() -> AuthConfig {
        AuthConfig {
            client_ca_pem: Some("cluster CA".into()),
            requestheader_ca_pem: Some("front-proxy CA".into()),
            allowed_names: vec!["front-proxy-client".into()],
            username_headers: vec!["x-remote-user".into()],
            group_headers: vec!["x-remote-group".into()],
            extra_prefixes: vec!["x-remote-extra-".into()],
            uid_headers: vec![],
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn cert(bundle: &str, cn: &str) -> PeerIdentity {
        PeerIdentity::Certificate {
            bundle: bundle.into(),
            common_name: cn.into(),
            organizations: vec![],
        }
    }

    async fn run(peer: &PeerIdentity, h: &[(&str, &str)], tokens: &Tokens) -> Authentication {
        authenticate_request(peer, &headers(h), &kubeadm(), false, tokens)
            .wait()
            .await
    }

    fn groups(auth: &Authentication) -> Vec<String> {
        match auth {
            Authentication::User(user) => user.groups.clone(),
            other => panic!("not a user: {other:?}"),
        }
    }

    #[tokio::test]
    async fn front_proxy_user_gets_authenticated_group_once() {
        let tokens = Tokens::default();
        let auth = run(
            &cert(REQUESTHEADER_BUNDLE, "front-proxy-client"),
            &[
                ("X-Remote-User", "hpa"),
                ("X-Remote-Group", "system:serviceaccounts"),
                ("X-Remote-Group", "system:authenticated"),
                ("Authorization", "Bearer good"),
            ],
            &tokens,
        )
        .await;
        assert_eq!(
            groups(&auth),
            vec!["system:serviceaccounts", "system:authenticated"]
        );
        // The certificate won: the token was never reviewed.
        assert_eq!(tokens.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn bearer_token_when_no_certificate() {
        let tokens = Tokens::default();
        let auth = run(
            &PeerIdentity::Anonymous,
            &[("Authorization", "Bearer good")],
            &tokens,
        )
        .await;
        assert_eq!(
            auth,
            Authentication::User(Arc::new(UserInfo {
                name: "alice".into(),
                groups: vec!["devs".into(), "system:authenticated".into()],
                ..Default::default()
            }))
        );
        assert_eq!(
            run(
                &PeerIdentity::Anonymous,
                &[("Authorization", "Bearer nope")],
                &tokens
            )
            .await,
            Authentication::Rejected("invalid bearer token".into())
        );
        assert!(matches!(
            run(&PeerIdentity::Anonymous, &[("Authorization", "Bearer down")], &tokens).await,
            Authentication::Error(message) if message.contains("connection refused")
        ));
    }

    #[tokio::test]
    async fn bearer_token_rescues_a_front_proxy_request_without_user() {
        let tokens = Tokens::default();
        let peer = cert(REQUESTHEADER_BUNDLE, "front-proxy-client");
        assert_eq!(
            groups(&run(&peer, &[("Authorization", "Bearer good")], &tokens).await),
            vec!["devs", "system:authenticated"]
        );
        // Without a token, the failed client-ca check makes it a 401.
        assert_eq!(
            run(&peer, &[], &tokens).await,
            Authentication::Rejected(
                "x509: certificate with cn=front-proxy-client is not signed by the client-ca-file CA"
                    .into()
            )
        );
        // With a bad token, both reasons.
        assert_eq!(
            run(&peer, &[("Authorization", "Bearer nope")], &tokens).await,
            Authentication::Rejected(
                "[x509: certificate with cn=front-proxy-client is not signed by the client-ca-file CA, invalid bearer token]"
                    .into()
            )
        );
    }

    #[tokio::test]
    async fn disallowed_front_proxy_is_rejected() {
        let auth = run(
            &cert(REQUESTHEADER_BUNDLE, "intruder"),
            &[
                ("X-Remote-User", "system:admin"),
                ("X-Remote-Group", "system:masters"),
            ],
            &Tokens::default(),
        )
        .await;
        let Authentication::Rejected(reason) = auth else {
            panic!("expected a 401, got {auth:?}");
        };
        assert!(
            reason.contains("x509: subject with cn=intruder is not in the allowed list"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn client_certificate_user() {
        let peer = PeerIdentity::Certificate {
            bundle: CLIENT_CA_BUNDLE.into(),
            common_name: "kubernetes-admin".into(),
            organizations: vec!["system:masters".into()],
        };
        assert_eq!(
            groups(&run(&peer, &[], &Tokens::default()).await),
            vec!["system:masters", "system:authenticated"]
        );
    }

    #[tokio::test]
    async fn nothing_at_all_is_anonymous() {
        let auth = run(
            &PeerIdentity::Anonymous,
            &[
                ("X-Remote-User", "forged"),
                ("Authorization", "Basic Zm9vOmJhcg=="),
            ],
            &Tokens::default(),
        )
        .await;
        assert_eq!(auth, Authentication::User(Arc::new(UserInfo::anonymous())));
    }

    #[test]
    fn review_errors() {
        let status = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: format!("code {code}"),
                ..Default::default()
            }))
        };
        let forbidden = ReviewError::from_kube(ReviewApi::SubjectAccessReview, status(403));
        assert!(matches!(forbidden, ReviewError::Forbidden { .. }));
        assert!(!forbidden.is_transient());
        assert_eq!(
            forbidden.to_string(),
            "creating a SubjectAccessReview is forbidden: code 403"
        );
        assert!(ReviewError::from_kube(ReviewApi::TokenReview, status(503)).is_transient());
        assert!(ReviewError::from_kube(ReviewApi::TokenReview, status(429)).is_transient());
        assert!(!ReviewError::from_kube(ReviewApi::TokenReview, status(422)).is_transient());
    }
}
