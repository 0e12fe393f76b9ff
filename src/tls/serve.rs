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

use crate::tls::ServerTls;
use crate::tls::peer::ConnectionPeer;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The client's TCP address, inserted into every request's extensions next to
/// `Arc<PeerIdentity>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr(pub SocketAddr);

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
    /// Interval of HTTP/2 PINGs; a peer that does not answer within 20 s is dropped. Reaps
    /// connections from peers that vanished (e.g. a partitioned kube-apiserver), which
    /// would otherwise stay open forever. `None` disables.
    pub http2_keep_alive_interval: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            drain: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            // Go's net/http2 default, which is what kube-apiserver's clients expect.
            max_concurrent_streams: 250,
            http2_keep_alive_interval: Some(Duration::from_secs(60)),
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
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
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
/// Wrap a tower service (e.g. an axum `Router`) in
/// `hyper_util::service::TowerToHyperService` to pass it here.
pub async fn serve_with_options<S, B>(
    listener: TcpListener,
    tls: ServerTls,
    service: S,
    shutdown: CancellationToken,
    options: ServeOptions,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
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
                        service: service.clone(),
                        shutdown: shutdown.clone(),
                        handshake_timeout: options.handshake_timeout,
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
            .max_concurrent_streams(options.max_concurrent_streams)
            .keep_alive_interval(options.http2_keep_alive_interval)
            .keep_alive_timeout(Duration::from_secs(20));
        Self {
            http1: base.clone().http1_only(),
            http2: base.http2_only(),
        }
    }
}

struct Connection<S> {
    acceptor: TlsAcceptor,
    tls: ServerTls,
    builders: Arc<Builders>,
    service: S,
    shutdown: CancellationToken,
    handshake_timeout: Duration,
}

impl<S> Connection<S> {
    async fn run<B>(
        self,
        stream: TcpStream,
        remote: SocketAddr,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        // Request/response traffic is small and latency-bound.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%remote, error = %err, "cannot set TCP_NODELAY");
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
        let service = WithConnectionInfo {
            inner: self.service,
            peer,
            remote: RemoteAddr(remote),
        };
        let connection = builder.serve_connection(TokioIo::new(tls_stream), service);
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(%remote, error = %err, "HTTPS connection ended with an error");
        }
    }
}

/// Adds the connection's identity, as of now, and address to each request before the
/// application sees it.
struct WithConnectionInfo<S> {
    inner: S,
    peer: ConnectionPeer,
    remote: RemoteAddr,
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
        extensions.insert(self.peer.current());
        extensions.insert(self.remote);
        self.inner.call(request)
    }
}
