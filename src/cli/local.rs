//! The client of the running agent's local API (`https://<bind_host>:<cmd_port>`, the
//! local token of `auth_token_file_path`) that the client commands (`metamap`, `health`,
//! `status`, `config get|set`, `flare`) talk through, as the Go DCA's CLI does: its own
//! self-signed certificate is not verified.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;
use crate::node_api::token::{LocalTokenError, read_local};

/// Why the agent could not be asked.
#[derive(Debug, thiserror::Error)]
pub(super) enum LocalApiError {
    #[error("{0}; is the cluster agent running here with this configuration?")]
    Token(#[source] LocalTokenError),
    #[error("cannot set up TLS for the local API: {0}")]
    Tls(String),
    #[error("cannot reach the cluster agent at {url} (is it running?)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// Why a JSON document could not be had from the agent.
#[derive(Debug, thiserror::Error)]
pub(super) enum JsonError {
    #[error(transparent)]
    Local(#[from] LocalApiError),
    #[error("the cluster agent at {url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the cluster agent at {url} answered no {what}: {source}")]
    Malformed {
        url: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// `GET path`, which must answer 200 with the JSON of a `T` (`what`, for the error).
pub(super) fn get_json<T: serde::de::DeserializeOwned>(
    settings: &Settings,
    path: &str,
    what: &'static str,
    timeout: Duration,
) -> anyhow::Result<T> {
    let Answer { url, status, body } = get(settings, path, timeout)?.map_err(JsonError::from)?;
    if status != 200 {
        let body = String::from_utf8_lossy(&body).trim_end().to_owned();
        return Err(JsonError::Refused { url, status, body }.into());
    }
    Ok(
        serde_json::from_slice(&body).map_err(|source| JsonError::Malformed {
            url,
            what,
            source,
        })?,
    )
}

/// What the agent answered.
pub(super) struct Answer {
    pub(super) url: String,
    pub(super) status: u16,
    pub(super) body: bytes::Bytes,
}

/// The settings as `start` reads them: a malformed setting nothing reads yet does not stop
/// a command that needs only the port and the token file.
pub(super) fn settings(cfgpath: Option<&Path>) -> anyhow::Result<Settings> {
    Ok(Settings::load_for_start(cfgpath)?.0)
}

/// `GET path` on the agent, within `timeout`.
pub(super) fn get(
    settings: &Settings,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<Result<Answer, LocalApiError>> {
    call(settings, reqwest::Method::GET, path, timeout)
}

/// `POST path` (no body: what to change is in the query) on the agent, within `timeout`.
pub(super) fn post(
    settings: &Settings,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<Result<Answer, LocalApiError>> {
    call(settings, reqwest::Method::POST, path, timeout)
}

fn call(
    settings: &Settings,
    method: reqwest::Method,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<Result<Answer, LocalApiError>> {
    let url = url(settings, path);
    let token = match read_local(&settings.auth_token_file_path) {
        Ok(token) => token,
        Err(e) => return Ok(Err(LocalApiError::Token(e))),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(fetch(method, url, token.expose(), timeout)))
}

/// The agent listens on `bind_host`; an unspecified one (0.0.0.0, ::) is reached on
/// loopback.
pub(super) fn url(settings: &Settings, path: &str) -> String {
    let host = if settings.bind_host.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        settings.bind_host
    };
    let addr = SocketAddr::new(host, settings.cluster_agent.cmd_port);
    format!("https://{addr}{path}")
}

async fn fetch(
    method: reqwest::Method,
    url: String,
    token: &str,
    timeout: Duration,
) -> Result<Answer, LocalApiError> {
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config()?)
        .timeout(timeout)
        .build()
        .map_err(|e| LocalApiError::Tls(e.to_string()))?;
    let sent = client.request(method, &url).bearer_auth(token).send().await;
    let response = match sent {
        Ok(response) => response,
        Err(source) => return Err(LocalApiError::Unreachable { url, source }),
    };
    let status = response.status().as_u16();
    match response.bytes().await {
        Ok(body) => Ok(Answer { url, status, body }),
        Err(source) => Err(LocalApiError::Unreachable { url, source }),
    }
}

fn tls_config() -> Result<rustls::ClientConfig, LocalApiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| LocalApiError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(crate::tls::accept_any_server_certificate(provider))
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_loopback_unless_bound_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let env = |bind: &'static str| {
            move |name: &str| match name {
                "DD_BIND_HOST" => Some(bind.to_owned()),
                "DD_CLUSTER_AGENT_CMD_PORT" => Some("6006".to_owned()),
                _ => None,
            }
        };
        // bind_host → URL of /status/health
        let cases = [
            ("0.0.0.0", "https://127.0.0.1:6006/status/health"),
            ("::", "https://127.0.0.1:6006/status/health"),
            ("10.1.2.3", "https://10.1.2.3:6006/status/health"),
        ];
        for (bind, want) in cases {
            let settings = Settings::load_from(None, dir.path(), &env(bind)).unwrap();
            assert_eq!(url(&settings, "/status/health"), want, "{bind}");
            assert_eq!(settings.auth_token_file_path, dir.path().join("auth_token"));
        }
    }
}
