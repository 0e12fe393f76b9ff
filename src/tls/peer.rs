//! The identity of one connection's peer, kept in step with the client CA bundles.
//!
//! kube's generic API server verifies the client chain on every request. kube-apiserver's
//! aggregator keeps its HTTP/2 connections open for days, so an identity fixed at the
//! handshake would keep trusting a front-proxy CA long after it was rotated out. Verifying
//! per request would put signature checks on every request instead, so the identity is
//! cached together with the bundle generation and the certificate expiry it holds for, and
//! recomputed only once either has moved on: a request costs an atomic load, an
//! uncontended lock and a clock read.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use rustls_pki_types::{CertificateDer, UnixTime};

use crate::tls::ClientCaHandle;
use crate::tls::client_auth::Unidentified;
use crate::tls::identity::{PeerIdentity, not_after};

/// What [`serve`](crate::tls::serve) inserts into each request of one connection.
pub(crate) struct ConnectionPeer {
    inner: Inner,
}

enum Inner {
    /// No client certificate, or none requested: nothing can change.
    Fixed(Arc<PeerIdentity>),
    Chain(ChainPeer),
}

struct ChainPeer {
    handle: ClientCaHandle,
    end_entity: CertificateDer<'static>,
    intermediates: Vec<CertificateDer<'static>>,
    /// `notAfter` of every presented certificate that has one.
    expiries: Vec<UnixTime>,
    /// For the log lines only.
    remote: SocketAddr,
    /// Only the connection's own task reads it (hyper calls the service from there), so the
    /// lock is never contended, even while a re-identification holds it.
    cached: Mutex<Cached>,
}

struct Cached {
    /// Bundle generation `identity` was computed at.
    generation: u64,
    identity: Arc<PeerIdentity>,
    /// Last second `identity` holds for even without a swap: the earliest `notAfter`, among
    /// those not yet passed at verification, of the presented certificates. `None`: no
    /// expiry to wait for (anonymous, or no readable validity).
    valid_until: Option<UnixTime>,
}

impl ConnectionPeer {
    /// The peer of a connection whose handshake completed; `chain` is what
    /// `ServerConnection::peer_certificates()` returned, `client_ca` the handle that
    /// verified it.
    pub(crate) fn new(
        client_ca: Option<&ClientCaHandle>,
        chain: Option<&[CertificateDer<'_>]>,
        remote: SocketAddr,
    ) -> Self {
        let (Some(handle), Some((end_entity, intermediates))) =
            (client_ca, chain.and_then(<[_]>::split_first))
        else {
            return Self {
                inner: Inner::Fixed(Arc::new(PeerIdentity::Anonymous)),
            };
        };
        let end_entity = end_entity.clone().into_owned();
        let intermediates: Vec<_> = intermediates
            .iter()
            .map(|cert| cert.clone().into_owned())
            .collect();
        let expiries = std::iter::once(&end_entity)
            .chain(&intermediates)
            .filter_map(|cert| not_after(cert))
            .collect();
        let mut peer = ChainPeer {
            handle: handle.clone(),
            end_entity,
            intermediates,
            expiries,
            remote,
            cached: Mutex::new(Cached {
                generation: 0,
                identity: Arc::new(PeerIdentity::Anonymous),
                valid_until: None,
            }),
        };
        let (cached, failure) = peer.identify(UnixTime::now());
        if let Some(reason) = failure {
            // The handshake accepted the chain, so the bundles changed in between.
            tracing::warn!(%remote, error = %reason, "treating the client as anonymous");
        }
        *peer
            .cached
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = cached;
        Self {
            inner: Inner::Chain(peer),
        }
    }

    /// The identity for a request arriving now.
    pub(crate) fn current(&self) -> Arc<PeerIdentity> {
        self.current_at(UnixTime::now)
    }

    /// [`current`](Self::current) with the clock as a parameter, read only when a
    /// certificate expiry could matter.
    pub(crate) fn current_at(&self, now: impl Fn() -> UnixTime) -> Arc<PeerIdentity> {
        let peer = match &self.inner {
            Inner::Fixed(identity) => return Arc::clone(identity),
            Inner::Chain(peer) => peer,
        };
        let generation = peer.handle.generation();
        let mut cached = peer.cached.lock().unwrap_or_else(PoisonError::into_inner);
        let mut time = None;
        if cached.generation == generation {
            let Some(until) = cached.valid_until else {
                return Arc::clone(&cached.identity);
            };
            let t = now();
            if t <= until {
                return Arc::clone(&cached.identity);
            }
            time = Some(t);
        }
        let (fresh, failure) = peer.identify(time.unwrap_or_else(now));
        peer.log_change(&cached.identity, &fresh.identity, failure);
        *cached = fresh;
        Arc::clone(&cached.identity)
    }
}

impl ChainPeer {
    fn identify(&self, now: UnixTime) -> (Cached, Option<Unidentified>) {
        let (generation, outcome) =
            self.handle
                .identify_at(&self.end_entity, &self.intermediates, now);
        match outcome {
            Ok(identity) => {
                // webpki accepts a certificate up to and including its notAfter second.
                let valid_until = self.expiries.iter().copied().filter(|e| *e >= now).min();
                let cached = Cached {
                    generation,
                    identity: Arc::new(identity),
                    valid_until,
                };
                (cached, None)
            }
            // Time only runs forward and the chain is fixed, so only a swap can change this.
            Err(reason) => {
                let cached = Cached {
                    generation,
                    identity: Arc::new(PeerIdentity::Anonymous),
                    valid_until: None,
                };
                (cached, Some(reason))
            }
        }
    }

    /// Logs a re-identification; `failure` is why `new` is anonymous. Losing the certificate
    /// identity is logged once, at the transition, not at every later swap that leaves the
    /// connection anonymous.
    fn log_change(&self, old: &PeerIdentity, new: &PeerIdentity, failure: Option<Unidentified>) {
        let remote = self.remote;
        match (old, failure) {
            (PeerIdentity::Certificate { bundle, .. }, Some(error)) => {
                tracing::warn!(
                    %remote,
                    previous_bundle = %bundle,
                    %error,
                    "client certificate of an open connection is no longer trusted; \
                     its requests are now anonymous"
                );
            }
            (PeerIdentity::Anonymous, None) => {
                tracing::info!(
                    %remote,
                    bundle = ?new.bundle(),
                    "client certificate of an open connection is trusted again"
                );
            }
            (PeerIdentity::Certificate { .. }, None) if old != new => {
                tracing::info!(
                    %remote,
                    bundle = ?new.bundle(),
                    "client certificate of an open connection re-identified"
                );
            }
            _ => {}
        }
    }
}
