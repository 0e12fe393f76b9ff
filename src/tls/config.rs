//! The rustls server configuration both servers use.

use std::sync::Arc;

use rustls::server::{NoServerSessionStorage, ResolvesServerCert, ServerConnection};
use rustls::version::{TLS12, TLS13};
use rustls::{ServerConfig, crypto::ring};

use crate::tls::{ALPN_PROTOCOLS, ClientCaHandle, PeerIdentity, TlsError};

/// Builds a TLS 1.2/1.3-only ring-provider configuration offering ALPN `h2` and `http/1.1`,
/// serving certificates from `certs` and, when `client_ca` is given, requesting (not
/// requiring) a client certificate verified against its bundles.
pub fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    client_ca: Option<&ClientCaHandle>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(TlsError::Config)?;
    let mut config = match client_ca {
        Some(handle) => builder.with_client_cert_verifier(handle.verifier()),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(certs);
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    if client_ca.is_some() {
        // A resumed session skips certificate verification, so a client whose CA was
        // removed could keep resuming. The aggregator holds long-lived HTTP/2 connections,
        // so full handshakes cost next to nothing.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// A server's TLS setup: the rustls configuration plus, when client certificates are
/// requested, the handle that tells which bundle verified a peer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    client_ca: Option<ClientCaHandle>,
}

impl ServerTls {
    /// See [`server_config`].
    pub fn new(
        certs: Arc<dyn ResolvesServerCert>,
        client_ca: Option<ClientCaHandle>,
    ) -> Result<Self, TlsError> {
        let config = server_config(certs, client_ca.as_ref())?;
        Ok(Self { config, client_ca })
    }

    /// TLS 1.3 only, without client certificates: the node-agent API's default, as the Go
    /// DCA's.
    pub fn tls13_only(certs: Arc<dyn ResolvesServerCert>) -> Result<Self, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(&[&TLS13])
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(certs);
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            config: Arc::new(config),
            client_ca: None,
        })
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// The client CA handle, if client certificates are requested.
    pub fn client_ca(&self) -> Option<&ClientCaHandle> {
        self.client_ca.as_ref()
    }

    /// The identity a completed handshake's client chain has under the current bundles.
    /// [`serve`](crate::tls::serve) does not stop there: it re-identifies the chain when the
    /// bundles change while the connection is open.
    pub fn peer_identity(&self, conn: &ServerConnection) -> PeerIdentity {
        match (&self.client_ca, conn.peer_certificates()) {
            (Some(handle), Some(chain)) => handle.identify(chain),
            _ => PeerIdentity::Anonymous,
        }
    }
}
