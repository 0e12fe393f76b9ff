//! Bearer tokens, checked with a TokenReview (`authentication.k8s.io/v1`) and cached.
//!
//! Tokens are secrets: they go into the TokenReview body and nowhere else. The cache is
//! keyed by a SHA-256 of a per-process random secret and the token, so neither the token
//! nor an unsalted hash of it is kept, and nothing here logs a TokenReview object (the API
//! server echoes the token back in `spec`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use moka::future::Cache;
use ring::digest::{Context, SHA256};

use crate::apiserver::auth::ReviewError;
use crate::apiserver::auth::readiness::{ReadinessTracker, ReviewApi};
use crate::apiserver::seams::{Answer, UserInfo};

/// What a TokenReview concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOutcome {
    /// The token belongs to this user (without `system:authenticated` added yet).
    Authenticated(Arc<UserInfo>),
    /// The token is not valid; the reason is safe to log (it never contains the token).
    Rejected(String),
}

/// Checks bearer tokens. Implemented by [`KubeTokenReviewer`] (the API server) and by
/// [`CachedTokenReviewer`] around any other implementation.
pub trait TokenReviewer: Send + Sync + 'static {
    fn review<'a>(&'a self, token: &'a str) -> Answer<'a, Result<TokenOutcome, ReviewError>>;
}

/// The TokenReview to create for `token`. No audiences: the API server's own apply, as
/// kube's delegating authenticator does when none are configured.
pub(crate) fn token_review(token: &str) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: None,
        },
        ..Default::default()
    }
}

/// Reads the API server's answer.
pub(crate) fn outcome(review: &TokenReview) -> Result<TokenOutcome, ReviewError> {
    let status = review.status.as_ref().ok_or(ReviewError::NoStatus {
        api: ReviewApi::TokenReview,
    })?;
    if status.authenticated != Some(true) {
        let reason = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            // kube's bearer-token authenticator's words when the reviewer gives none.
            .unwrap_or("invalid bearer token");
        return Ok(TokenOutcome::Rejected(reason.to_owned()));
    }
    let user = status.user.clone().unwrap_or_default();
    let name = user.username.unwrap_or_default();
    if name.is_empty() {
        // An identity without a name cannot be authorized meaningfully; refuse it rather
        // than review "" against RBAC.
        return Ok(TokenOutcome::Rejected(
            "the TokenReview authenticated the token but returned no user name".to_owned(),
        ));
    }
    Ok(TokenOutcome::Authenticated(Arc::new(UserInfo {
        name,
        uid: user.uid.unwrap_or_default(),
        groups: user.groups.unwrap_or_default(),
        extra: user.extra.unwrap_or_default(),
    })))
}

/// Creates TokenReviews through the API server.
pub struct KubeTokenReviewer {
    api: Api<TokenReview>,
    timeout: Duration,
    readiness: ReadinessTracker,
    calls: AtomicU64,
}

impl std::fmt::Debug for KubeTokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTokenReviewer")
            .field("timeout", &self.timeout)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

impl KubeTokenReviewer {
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

    /// TokenReviews created for requests so far (probes excluded).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    async fn create(&self, token: &str) -> Result<TokenReview, ReviewError> {
        let result = super::create_review(
            &self.api,
            &token_review(token),
            ReviewApi::TokenReview,
            self.timeout,
        )
        .await;
        match &result {
            Ok(_) => self
                .readiness
                .set_review_forbidden(ReviewApi::TokenReview, false),
            Err(ReviewError::Forbidden { .. }) => self
                .readiness
                .set_review_forbidden(ReviewApi::TokenReview, true),
            Err(_) => {}
        }
        result
    }

    /// Checks that this agent may create TokenReviews, with a token that cannot be valid.
    pub async fn probe(&self) -> Result<(), ReviewError> {
        self.create("dca-permission-probe").await.map(|_| ())
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> Answer<'a, Result<TokenOutcome, ReviewError>> {
        Answer::later(move || async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            outcome(&self.create(token).await?)
        })
    }
}

/// Cache key: SHA-256 over a per-process secret and the token.
type TokenKey = Box<[u8]>;

/// Caches the outcomes of another reviewer — valid and invalid tokens alike — for a fixed
/// time; errors are not cached. Concurrent reviews of one token share one API call.
pub struct CachedTokenReviewer<R> {
    inner: R,
    cache: Cache<TokenKey, TokenOutcome>,
    secret: [u8; 32],
}

impl<R> std::fmt::Debug for CachedTokenReviewer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedTokenReviewer")
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl<R: TokenReviewer> CachedTokenReviewer<R> {
    /// kube's delegating authenticator caches for 10 s.
    pub fn new(inner: R, ttl: Duration, capacity: u64) -> Self {
        Self {
            inner,
            cache: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            secret: rand::random(),
        }
    }

    /// The wrapped reviewer.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    fn key(&self, token: &str) -> TokenKey {
        let mut ctx = Context::new(&SHA256);
        ctx.update(&self.secret);
        ctx.update(token.as_bytes());
        ctx.finish().as_ref().into()
    }
}

impl<R: TokenReviewer> TokenReviewer for CachedTokenReviewer<R> {
    fn review<'a>(&'a self, token: &'a str) -> Answer<'a, Result<TokenOutcome, ReviewError>> {
        let key = self.key(token);
        // A hit is answered at once. moka's lookup is a future only because it may do
        // housekeeping; if that has to wait, the request takes the path of a miss.
        if let Some(Some(outcome)) = self.cache.get(&key).now_or_never() {
            return Answer::ready(Ok(outcome));
        }
        Answer::later(move || async move {
            self.cache
                .try_get_with(key, self.inner.review(token).wait())
                .await
                .map_err(|e| (*e).clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo as K8sUserInfo};

    use super::*;

    fn answered(status: TokenReviewStatus) -> TokenReview {
        TokenReview {
            status: Some(status),
            ..token_review("t")
        }
    }

    #[test]
    fn request_carries_the_token_and_no_audiences() {
        let json = serde_json::to_value(token_review("s3cr3t")).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "metadata": {},
                "spec": { "token": "s3cr3t" }
            })
        );
    }

    #[test]
    fn outcomes() {
        let sa = answered(TokenReviewStatus {
            authenticated: Some(true),
            user: Some(K8sUserInfo {
                username: Some("system:serviceaccount:default:app".into()),
                uid: Some("42".into()),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    "system:serviceaccounts:default".into(),
                ]),
                extra: Some(BTreeMap::from([(
                    "authentication.kubernetes.io/pod-name".to_owned(),
                    vec!["app-1".to_owned()],
                )])),
            }),
            ..Default::default()
        });
        assert_eq!(
            outcome(&sa).expect("status"),
            TokenOutcome::Authenticated(Arc::new(UserInfo {
                name: "system:serviceaccount:default:app".into(),
                uid: "42".into(),
                groups: vec![
                    "system:serviceaccounts".into(),
                    "system:serviceaccounts:default".into()
                ],
                extra: BTreeMap::from([(
                    "authentication.kubernetes.io/pod-name".to_owned(),
                    vec!["app-1".to_owned()]
                )]),
            }))
        );

        let cases = [
            (
                TokenReviewStatus::default(),
                TokenOutcome::Rejected("invalid bearer token".into()),
            ),
            (
                TokenReviewStatus {
                    authenticated: Some(false),
                    error: Some("[invalid bearer token, token expired]".into()),
                    ..Default::default()
                },
                TokenOutcome::Rejected("[invalid bearer token, token expired]".into()),
            ),
            (
                TokenReviewStatus {
                    authenticated: Some(true),
                    user: None,
                    ..Default::default()
                },
                TokenOutcome::Rejected(
                    "the TokenReview authenticated the token but returned no user name".into(),
                ),
            ),
        ];
        for (status, expected) in cases {
            assert_eq!(outcome(&answered(status)).expect("status"), expected);
        }
        assert!(matches!(
            outcome(&token_review("t")),
            Err(ReviewError::NoStatus { .. })
        ));
    }

    #[test]
    fn sha256_is_sha256() {
        // FIPS 180-2 test vector, through the same calls `key` makes.
        let mut ctx = Context::new(&SHA256);
        ctx.update(b"a");
        ctx.update(b"bc");
        let digest = ctx.finish();
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Answers from a table and counts calls.
    struct Fake {
        calls: Arc<AtomicUsize>,
        fail: bool,
    }

    impl TokenReviewer for Fake {
        fn review<'a>(&'a self, token: &'a str) -> Answer<'a, Result<TokenOutcome, ReviewError>> {
            Answer::later(move || async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                // Long enough that concurrent callers overlap.
                tokio::time::sleep(Duration::from_millis(20)).await;
                if self.fail {
                    return Err(ReviewError::Transport {
                        api: ReviewApi::TokenReview,
                        cause: crate::error::Cause::msg("connection refused"),
                    });
                }
                Ok(match token {
                    "good" => TokenOutcome::Authenticated(Arc::new(UserInfo {
                        name: "alice".into(),
                        ..Default::default()
                    })),
                    _ => TokenOutcome::Rejected("invalid bearer token".into()),
                })
            })
        }
    }

    fn cached(fail: bool, ttl: Duration) -> (CachedTokenReviewer<Fake>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let fake = Fake {
            calls: Arc::clone(&calls),
            fail,
        };
        (CachedTokenReviewer::new(fake, ttl, 100), calls)
    }

    #[tokio::test]
    async fn valid_and_invalid_tokens_are_cached() {
        let (reviewer, calls) = cached(false, Duration::from_secs(600));
        for _ in 0..3 {
            assert!(matches!(
                reviewer.review("good").wait().await,
                Ok(TokenOutcome::Authenticated(_))
            ));
            assert!(matches!(
                reviewer.review("bad").wait().await,
                Ok(TokenOutcome::Rejected(_))
            ));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_cached_outcome_is_answered_at_once() {
        let (reviewer, calls) = cached(false, Duration::from_secs(600));
        assert!(matches!(reviewer.review("good"), Answer::Later(_)));
        assert!(reviewer.review("good").wait().await.is_ok());
        assert!(matches!(
            reviewer.review("good"),
            Answer::Ready(Ok(TokenOutcome::Authenticated(_)))
        ));
        // An answer dropped unpolled asked nothing: only the awaited review counted.
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(matches!(reviewer.review("other"), Answer::Later(_)));
    }

    #[tokio::test]
    async fn concurrent_reviews_of_one_token_share_a_call() {
        let (reviewer, calls) = cached(false, Duration::from_secs(600));
        let results =
            futures::future::join_all((0..8).map(|_| reviewer.review("good").wait())).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let (reviewer, calls) = cached(true, Duration::from_secs(600));
        assert!(reviewer.review("good").wait().await.is_err());
        assert!(reviewer.review("good").wait().await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn entries_expire() {
        let (reviewer, calls) = cached(false, Duration::from_millis(50));
        reviewer.review("good").wait().await.expect("reviewed");
        // Eventually (not at a fixed time) the entry is gone and the reviewer is asked again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while calls.load(Ordering::SeqCst) < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "entry never expired"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            reviewer.review("good").wait().await.expect("reviewed");
        }
    }

    #[test]
    fn keys_depend_on_the_secret_and_the_token() {
        let (a, _) = cached(false, Duration::from_secs(1));
        let (b, _) = cached(false, Duration::from_secs(1));
        assert_eq!(a.key("token"), a.key("token"));
        assert_ne!(a.key("token"), a.key("token2"));
        assert_ne!(a.key("token"), b.key("token"));
        assert_eq!(a.key("token").len(), 32);
    }
}
