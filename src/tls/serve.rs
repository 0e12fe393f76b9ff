//! The HTTPS accept/serve loop with graceful draining.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::tls::peer::ConnectionPeer;
use crate::tls::{PeerIdentity, ServerTls};

type BoxError = Box<dyn StdError + Send + Sync>;

/// The client's TCP address, inserted into every request's extensions next to
/// `Arc<PeerIdentity>` by [`serve`] and [`serve_with_options`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr(pub SocketAddr);

/// What the TLS layer knows of one connection's client, handed to the service made for
/// that connection by [`serve_connections`].
pub struct ConnectionInfo {
    peer: ConnectionPeer,
    remote: SocketAddr,
}

impl ConnectionInfo {
    /// The client's identity for a request arriving now: it follows
    /// [`ClientCaHandle::set_bundles`](crate::tls::ClientCaHandle::set_bundles) and
    /// certificate expiry even on a connection opened earlier.
    pub fn peer_identity(&self) -> Arc<PeerIdentity> {
        self.peer.current()
    }

    pub fn remote(&self) -> SocketAddr {
        self.remote
    }
}

/// Tunables of [`serve_with_options`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long in-flight connections may take to finish after shutdown is signalled before
    /// they are dropped.
    pub drain: Duration,
    /// Limit on the TLS handshake, so half-open connections cannot pile up.
    pub handshake_timeout: Duration,
    /// Limit on reading an HTTP/1 request head, against slowloris clients.
    pub header_read_timeout: Duration,
    /// HTTP/2 streams allowed per connection.
    pub max_concurrent_streams: u32,
    /// TCP keep-alive of accepted connections, which reaps connections from peers that
    /// vanished (e.g. a partitioned kube-apiserver) and would otherwise stay open forever.
    /// `None` leaves the system's settings.
    pub tcp_keepalive: Option<TcpKeepalive>,
}

/// When the kernel gives up on a silent peer: after `idle` without traffic it sends a probe
/// every `interval`, and drops the connection once `probes` have gone unanswered; data
/// left unacknowledged for `idle + probes × interval` drops it too (`TCP_USER_TIMEOUT`).
///
/// Done by the kernel rather than with HTTP/2 PINGs, which cost clock reads and timer
/// work on every request of every connection; Go's servers (kube-apiserver's included)
/// rely on TCP keep-alive the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub probes: u32,
}

impl Default for TcpKeepalive {
    /// A dead peer is dropped about 80 s after its last sign of life.
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            probes: 2,
        }
    }
}

impl TcpKeepalive {
    /// How long unacknowledged data may wait before the connection is dropped.
    pub fn user_timeout(&self) -> Duration {
        self.idle + self.interval * self.probes
    }
}

/// Applies TCP_NODELAY and the keep-alive settings to an accepted connection.
pub fn configure_stream(
    stream: &TcpStream,
    keepalive: Option<&TcpKeepalive>,
) -> std::io::Result<()> {
    // Request/response traffic is small and latency-bound.
    stream.set_nodelay(true)?;
    if let Some(k) = keepalive {
        let socket = socket2::SockRef::from(stream);
        socket.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval)
                .with_retries(k.probes),
        )?;
        socket.set_tcp_user_timeout(Some(k.user_timeout()))?;
    }
    Ok(())
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            drain: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            // Go's net/http2 default, which is what kube-apiserver's clients expect.
            max_concurrent_streams: 250,
            tcp_keepalive: Some(TcpKeepalive::default()),
        }
    }
}

/// [`serve_with_options`] with default timeouts and the given drain period.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: ServerTls,
    service: S,
    shutdown: CancellationToken,
    drain: Duration,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let options = ServeOptions {
        drain,
        ..ServeOptions::default()
    };
    serve_with_options(listener, tls, service, shutdown, options).await;
}

/// Serves HTTPS (HTTP/1.1 and HTTP/2, chosen by ALPN) on `listener` until `shutdown` is
/// cancelled, then closes the listener, lets in-flight connections finish for at most
/// `options.drain`, drops whatever is left and returns.
///
/// Each request carries `Arc<PeerIdentity>` and [`RemoteAddr`] in its extensions. The
/// identity follows [`ClientCaHandle::set_bundles`](crate::tls::ClientCaHandle::set_bundles)
/// and certificate expiry even on a connection opened earlier, as kube's per-request chain
/// verification does; until either changes it is reused, with no cryptography per request.
/// Handshake failures and connection errors are logged at debug level and only end that
/// connection.
pub async fn serve_with_options<S, B>(
    listener: TcpListener,
    tls: ServerTls,
    service: S,
    shutdown: CancellationToken,
    options: ServeOptions,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let make = move |connection| WithConnectionInfo {
        inner: service.clone(),
        connection,
    };
    serve_connections(listener, tls, make, shutdown, options).await;
}

/// [`serve_with_options`] for a service made per connection by `make`, which receives what
/// the TLS layer knows of the client ([`ConnectionInfo`]) instead of finding it in every
/// request's extensions: that saves the extension map each request would otherwise
/// allocate.
pub async fn serve_connections<M, S, B>(
    listener: TcpListener,
    tls: ServerTls,
    make: M,
    shutdown: CancellationToken,
    options: ServeOptions,
) where
    M: Fn(ConnectionInfo) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let make = Arc::new(make);
    let builders = Arc::new(Builders::new(&options));
    let acceptor = TlsAcceptor::from(Arc::clone(tls.config()));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                log_join(joined);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let connection = Connection {
                        acceptor: acceptor.clone(),
                        tls: tls.clone(),
                        builders: Arc::clone(&builders),
                        make: Arc::clone(&make),
                        shutdown: shutdown.clone(),
                        handshake_timeout: options.handshake_timeout,
                        tcp_keepalive: options.tcp_keepalive,
                    };
                    // Taken before the task starts so that shutdown waits for this
                    // connection even while it is still handshaking.
                    let watcher = graceful.watcher();
                    let span = tracing::info_span!("connection", %remote);
                    connections.spawn(connection.run(stream, remote, watcher).instrument(span));
                }
                Err(err) => {
                    // Usually transient (ECONNABORTED, or EMFILE until connections close);
                    // the pause keeps a persistent failure from spinning the loop.
                    tracing::warn!(error = %err, "cannot accept TCP connection");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }

    // Closing the socket now makes new connection attempts fail fast instead of queueing
    // in the backlog for a server that will never accept them.
    drop(listener);
    let in_flight = connections.len();
    tracing::debug!(connections = in_flight, "draining HTTPS connections");
    let drained = tokio::time::timeout(options.drain, async {
        graceful.shutdown().await;
        while let Some(joined) = connections.join_next().await {
            log_join(joined);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            drain = ?options.drain,
            "HTTPS connections still open after the drain period; closing them"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined
        && err.is_panic()
    {
        tracing::error!(error = %err, "HTTPS connection task panicked");
    }
}

/// HTTP protocol is decided by ALPN rather than by sniffing the connection preface: RFC 9113
/// requires ALPN for h2 over TLS, and sniffing would wait without any timeout on a client
/// that sends nothing.
/// hyper's executor for HTTP/2 stream tasks: each runs in the span of the connection that
/// spawned it, so what a stream logs names its peer.
#[derive(Debug, Clone, Copy)]
struct SpanExecutor;

impl<F> hyper::rt::Executor<F> for SpanExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future.in_current_span());
    }
}

struct Builders {
    http1: auto::Builder<SpanExecutor>,
    http2: auto::Builder<SpanExecutor>,
}

impl Builders {
    fn new(options: &ServeOptions) -> Self {
        let mut base = auto::Builder::new(SpanExecutor);
        base.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout);
        base.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(options.max_concurrent_streams);
        Self {
            http1: base.clone().http1_only(),
            http2: base.http2_only(),
        }
    }
}

struct Connection<M> {
    acceptor: TlsAcceptor,
    tls: ServerTls,
    builders: Arc<Builders>,
    make: Arc<M>,
    shutdown: CancellationToken,
    handshake_timeout: Duration,
    tcp_keepalive: Option<TcpKeepalive>,
}

impl<M> Connection<M> {
    async fn run<S, B>(
        self,
        stream: TcpStream,
        remote: SocketAddr,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        M: Fn(ConnectionInfo) -> S,
        S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        if let Err(err) = configure_stream(&stream, self.tcp_keepalive.as_ref()) {
            tracing::debug!(%remote, error = %err, "cannot set TCP options");
        }
        let handshake = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream));
        let tls_stream = tokio::select! {
            () = self.shutdown.cancelled() => return,
            result = handshake => match result {
                Ok(Ok(tls_stream)) => tls_stream,
                Ok(Err(err)) => {
                    tracing::debug!(%remote, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            },
        };

        let (_, session) = tls_stream.get_ref();
        let peer = ConnectionPeer::new(self.tls.client_ca(), session.peer_certificates(), remote);
        let builder = if session.alpn_protocol() == Some(b"h2".as_slice()) {
            &self.builders.http2
        } else {
            &self.builders.http1
        };
        let service = (self.make)(ConnectionInfo { peer, remote });
        let connection = builder.serve_connection(TokioIo::new(tls_stream), service);
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(%remote, error = %err, "HTTPS connection ended with an error");
        }
    }
}

/// Adds the connection's identity, as of now, and address to each request before a service
/// that knows nothing of connections sees it.
struct WithConnectionInfo<S> {
    inner: S,
    connection: ConnectionInfo,
}

impl<S> Service<Request<Incoming>> for WithConnectionInfo<S>
where
    S: Service<Request<Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let extensions = request.extensions_mut();
        extensions.insert(self.connection.peer_identity());
        extensions.insert(RemoteAddr(self.connection.remote));
        self.inner.call(request)
    }
}
