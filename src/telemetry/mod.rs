//! Prometheus `/metrics` on `metrics_port` (5000), over plain HTTP as the Go DCA serves it,
//! for the Datadog `datadog_cluster_agent` check and any Prometheus scraper: the registry
//! every subsystem registered its series on at start-up, encoded on each scrape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Response, StatusCode};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::apiserver::response::{Body, NOSNIFF, body_response};
use crate::apiserver::server::{ServerError, bind};

const SERVER: &str = "telemetry server";
/// A scrape is one small answer; nothing is worth waiting longer for at shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// A scraper that sends no request head within this is dropped (it holds a task).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const OPENMETRICS: HeaderValue =
    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");

/// Serves `/metrics` on `addr` until `shutdown`.
pub(crate) async fn run(
    addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let listener = bind(SERVER, addr).await?;
    tracing::info!(%addr, "telemetry server listening (/metrics)");
    serve(listener, registry, shutdown).await;
    tracing::info!(%addr, "telemetry server stopped");
    Ok(())
}

/// Serves `/metrics` on an already-bound listener until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "telemetry server cannot accept a connection");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let registry = Arc::clone(&registry);
        let service = hyper::service::service_fn(move |request: http::Request<_>| {
            let response = answer(&registry, request.method(), request.uri().path());
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "telemetry connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("telemetry connections still open after the drain period");
    }
}

/// `/metrics` in the OpenMetrics text format; anything else as Go's `net/http` mux answers.
fn answer(registry: &Registry, method: &Method, path: &str) -> Response<Body> {
    let head = method == Method::HEAD;
    if path != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "404 page not found\n", head);
    }
    if !(method == Method::GET || head) {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n", head);
    }
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, registry) {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the metrics: {err}\n"),
            head,
        );
    }
    let mut response = body_response(StatusCode::OK, Bytes::from(text), head);
    response.headers_mut().insert(CONTENT_TYPE, OPENMETRICS);
    response
}

fn plain(code: StatusCode, body: &str, head: bool) -> Response<Body> {
    let mut response = body_response(code, Bytes::from(body.to_owned()), head);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(NOSNIFF, HeaderValue::from_static("nosniff"));
    response
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn registry() -> Registry {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        counter.inc_by(3);
        registry.register("scrapes_seen", "A counter", counter);
        registry
    }

    fn call(method: Method, path: &str) -> (StatusCode, String, String) {
        let response = answer(&registry(), &method, path);
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let status = response.status();
        let body = futures::executor::block_on(response.into_body().collect())
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        (status, content_type, body)
    }

    #[test]
    fn metrics_are_openmetrics_text_and_other_requests_are_refused() {
        let (status, content_type, body) = call(Method::GET, "/metrics");
        assert_eq!(status, StatusCode::OK);
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert!(body.lines().any(|l| l == "scrapes_seen_total 3"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        // (method, path) → status, body
        let cases: &[(Method, &str, StatusCode, &str)] = &[
            (
                Method::GET,
                "/",
                StatusCode::NOT_FOUND,
                "404 page not found\n",
            ),
            (
                Method::GET,
                "/metrics/",
                StatusCode::NOT_FOUND,
                "404 page not found\n",
            ),
            (
                Method::POST,
                "/metrics",
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed\n",
            ),
            (Method::HEAD, "/metrics", StatusCode::OK, ""),
        ];
        for (method, path, want_status, want_body) in cases {
            let (status, _, body) = call(method.clone(), path);
            assert_eq!(
                (status, body.as_str()),
                (*want_status, *want_body),
                "{method} {path}"
            );
        }
    }

    #[tokio::test]
    async fn the_server_answers_scrapes_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(registry()), shutdown.clone()));
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: dca\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("\r\n\r\n# HELP scrapes_seen A counter."),
            "{answer}"
        );
        assert!(answer.contains("scrapes_seen_total 3"), "{answer}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("stops")
            .expect("no panic");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener is closed after shutdown"
        );
    }
}
