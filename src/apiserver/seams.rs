//! The seams of every API server of ours: who is calling ([`Authenticator`]), whether they
//! may ([`Authorizer`]), and the [`Answer`] each seam gives, now or later. A service depends
//! only on these, so each side is tested alone.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures::future::BoxFuture;

/// What a seam answers: now (a cache hit, an in-memory lookup) or later (a call to the API
/// server or Datadog). Every request goes through three seams, and the ready form lets the
/// common case cost no allocation, where a boxed future per seam would cost one each.
///
/// A `Later` answer is a [`Deferred`]: a closure that builds the future. A caller that cannot
/// wait drops it uncalled and asks again when it can; since no future exists before
/// [`Deferred::start`], nothing of the work can have begun, whatever the seam wrote inside.
pub enum Answer<'a, T> {
    Ready(T),
    Later(Deferred<'a, T>),
}

impl<'a, T: 'a> Answer<'a, T> {
    pub fn ready(value: T) -> Self {
        Answer::Ready(value)
    }

    /// The work to do when the caller can wait: `start` runs only then, and at most once.
    pub fn later<F, Fut>(start: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'a,
        Fut: Future<Output = T> + Send + 'a,
    {
        Answer::Later(Deferred {
            start: Box::new(move || Box::pin(start())),
        })
    }

    /// The answer as a future, starting deferred work: for a caller that can always wait.
    /// A request attempt at [`Pace::Now`] must use [`settle`] instead, which never starts
    /// anything (an attempt abandoned after starting work would have it done twice).
    pub fn wait(self) -> AnswerFuture<'a, T> {
        match self {
            Answer::Ready(value) => AnswerFuture::Ready(Some(value)),
            Answer::Later(deferred) => AnswerFuture::Started(deferred.start()),
        }
    }

    /// This answer with `f` applied to its value, ready or not.
    pub fn map<U: 'a>(self, f: impl FnOnce(T) -> U + Send + 'a) -> Answer<'a, U>
    where
        T: Send,
    {
        match self {
            Answer::Ready(value) => Answer::Ready(f(value)),
            Answer::Later(deferred) => Answer::later(move || {
                let future = deferred.start();
                async move { f(future.await) }
            }),
        }
    }
}

/// Work not begun: [`start`](Self::start) builds its future. Dropping it does nothing.
pub struct Deferred<'a, T> {
    start: Box<dyn FnOnce() -> BoxFuture<'a, T> + Send + 'a>,
}

impl<'a, T> Deferred<'a, T> {
    pub fn start(self) -> BoxFuture<'a, T> {
        (self.start)()
    }
}

impl<T> std::fmt::Debug for Deferred<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deferred")
    }
}

/// The future of an [`Answer`] being awaited.
pub enum AnswerFuture<'a, T> {
    Ready(Option<T>),
    Started(BoxFuture<'a, T>),
}

// The value is moved out, never pinned in place, so pinning the future pins nothing of `T`.
impl<T> Unpin for AnswerFuture<'_, T> {}

impl<T> Future for AnswerFuture<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            // Polling again after completion is a caller bug; never completing is one of the
            // behaviours `Future` allows for it.
            AnswerFuture::Ready(value) => value.take().map_or(Poll::Pending, Poll::Ready),
            AnswerFuture::Started(future) => future.as_mut().poll(cx),
        }
    }
}

/// Whether answering a request may wait for a seam.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// On the stack, in the service's `call`: a seam that cannot answer at once ends the
    /// attempt, its [`Deferred`] dropped unstarted.
    Now,
    /// In the request's own future.
    MayWait,
}

/// A seam's answer; `None` when it is deferred and `pace` is `Now`.
pub async fn settle<T>(answer: Answer<'_, T>, pace: Pace) -> Option<T> {
    match (answer, pace) {
        (Answer::Ready(value), _) => Some(value),
        (Answer::Later(deferred), Pace::MayWait) => Some(deferred.start().await),
        (Answer::Later(_), Pace::Now) => None,
    }
}

/// Runs `attempt` (written against [`Pace::Now`]) once on the stack. `None`: some seam
/// deferred, and the caller answers again at [`Pace::MayWait`] in a future of its own.
///
/// An attempt at `Pace::Now` only awaits [`settle`], which never waits at that pace, so one
/// poll completes it; were it ever pending, the answer is `None`, which is always right.
pub(crate) fn attempt_now<R>(attempt: impl Future<Output = Option<R>>) -> Option<R> {
    let attempt = pin!(attempt);
    match attempt.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(answer) => answer,
        Poll::Pending => None,
    }
}

/// An authenticated identity, as Kubernetes' `user.Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn anonymous() -> Self {
        UserInfo {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            ..Default::default()
        }
    }
}

/// What the authenticator concluded from the TLS peer and the headers.
#[derive(Debug, Clone, PartialEq)]
pub enum Authentication {
    /// Shared, so that a cached identity costs a reference-count bump per request.
    User(Arc<UserInfo>),
    /// 401 Unauthorized with this reason (e.g. a bearer token TokenReview rejected).
    Rejected(String),
    /// 500: the authentication backend could not be asked.
    Error(String),
}

/// The request as Kubernetes' RequestInfo sees it, for a SubjectAccessReview. Borrowed from
/// the request (and constants) on the request path; [`into_owned`](Self::into_owned) for a
/// cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestAttributes<'a> {
    Resource {
        verb: Cow<'a, str>,
        group: Cow<'a, str>,
        version: Cow<'a, str>,
        resource: Cow<'a, str>,
        namespace: Cow<'a, str>,
    },
    NonResource {
        verb: Cow<'a, str>,
        path: Cow<'a, str>,
    },
}

impl RequestAttributes<'_> {
    pub fn into_owned(self) -> RequestAttributes<'static> {
        let own = |s: Cow<'_, str>| Cow::Owned(s.into_owned());
        match self {
            RequestAttributes::Resource {
                verb,
                group,
                version,
                resource,
                namespace,
            } => RequestAttributes::Resource {
                verb: own(verb),
                group: own(group),
                version: own(version),
                resource: own(resource),
                namespace: own(namespace),
            },
            RequestAttributes::NonResource { verb, path } => RequestAttributes::NonResource {
                verb: own(verb),
                path: own(path),
            },
        }
    }
}

/// Whether a subsystem can serve, and if not why, for `/readyz` and logs. Sent on a
/// `tokio::sync::watch` channel by the side that knows (e.g. delegated auth).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// Empty when ready; otherwise what is missing and how to fix it.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow,
    /// 403 Forbidden, with the reason the authorizer gave.
    Deny(String),
    /// 500: the authorization backend could not be asked.
    Error(String),
}

pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        peer: &'a crate::tls::PeerIdentity,
        headers: &'a http::HeaderMap,
    ) -> Answer<'a, Authentication>;
}

pub trait Authorizer: Send + Sync + 'static {
    fn authorize<'a>(
        &'a self,
        user: &'a UserInfo,
        attributes: &'a RequestAttributes<'a>,
    ) -> Answer<'a, Decision>;
}
