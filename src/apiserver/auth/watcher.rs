//! Keeps the trust configuration in step with ConfigMap
//! `kube-system/extension-apiserver-authentication`.
//!
//! The watch uses `fieldSelector=metadata.name=…` in `kube-system`, the one list/watch
//! shape the `extension-apiserver-authentication-reader` Role (scoped by resourceNames)
//! allows. Every change is re-parsed; a good one replaces the CA bundles of the TLS server
//! and the header configuration at once, a bad one is logged and the previous stays.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;

use crate::apiserver::auth::config::{
    AuthConfig, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE, ConfigError,
};
use crate::apiserver::auth::readiness::ConfigMapState;
use crate::apiserver::auth::{DelegatingAuth, Trust};

/// Why a ConfigMap version was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot install the client CA bundles: {0}")]
    Install(#[source] crate::tls::TlsError),
}

/// Parses `cm` and, if it differs from what is in force, installs it: CA bundles first,
/// then headers, so a request never sees headers trusted under a CA that is not yet (or no
/// longer) the one verifying connections for longer than one swap. Returns whether
/// anything changed.
pub fn apply_configmap(auth: &DelegatingAuth, cm: &ConfigMap) -> Result<bool, ApplyError> {
    let config = AuthConfig::from_configmap(cm)?;
    let current = auth.trust();
    if current.loaded && current.config == config {
        return Ok(false);
    }
    let trust = config.ca_bundles()?;
    auth.client_ca()
        .set_bundles(trust.bundles)
        .map_err(ApplyError::Install)?;
    tracing::info!(
        client_ca = config.client_ca_pem.is_some(),
        requestheader_ca = config.requestheader_ca_pem.is_some(),
        allowed_names = ?config.allowed_names,
        username_headers = ?config.username_headers,
        group_headers = ?config.group_headers,
        extra_prefixes = ?config.extra_prefixes,
        uid_headers = ?config.uid_headers,
        "applied ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}"
    );
    auth.set_trust(Trust {
        config,
        requestheader_within_client_ca: trust.requestheader_within_client_ca,
        loaded: true,
    });
    Ok(true)
}

fn is_forbidden(error: &watcher::Error) -> bool {
    let status = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
        | watcher::Error::WatchError(status) => status,
        _ => return false,
    };
    status.code == 403
}

/// Handles one version of the ConfigMap.
fn on_configmap(auth: &DelegatingAuth, cm: &ConfigMap) {
    let readiness = auth.readiness_tracker();
    match apply_configmap(auth, cm) {
        Ok(_) => readiness.set_configmap(ConfigMapState::Loaded),
        Err(error) => {
            auth.count_rejected_configmap();
            let loaded = auth.trust().loaded;
            if loaded {
                tracing::warn!(%error, "ignoring an unusable update of ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}; the previous configuration stays in force");
                // A read worked, even if its content did not: clear a 403 from before.
                readiness.set_configmap(ConfigMapState::Loaded);
            } else {
                tracing::error!(%error, "cannot use ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}");
                readiness.set_configmap(ConfigMapState::Invalid(error.to_string()));
            }
        }
    }
}

/// Watches until `shutdown`. Errors are retried with kube-runtime's default backoff
/// (0.8 s doubling to 30 s), so the watch never gives up.
pub(crate) async fn watch_configmap(auth: &DelegatingAuth, shutdown: CancellationToken) {
    let api: Api<ConfigMap> = Api::namespaced(auth.kube_client().clone(), CONFIGMAP_NAMESPACE);
    let config = watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP_NAME}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let readiness = auth.readiness_tracker();
    // Whether the current (re)list has produced the ConfigMap.
    let mut listed = false;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        let Some(event) = event else {
            // watcher() streams never end; if one does, stopping is all that is left.
            tracing::error!("the ConfigMap watch ended");
            return;
        };
        match event {
            Ok(Event::Init) => listed = false,
            Ok(Event::InitApply(cm) | Event::Apply(cm)) => {
                listed = true;
                on_configmap(auth, &cm);
            }
            Ok(Event::InitDone) => {
                if !listed {
                    if auth.trust().loaded {
                        tracing::warn!(
                            "ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} is gone; the previous configuration stays in force"
                        );
                        readiness.set_configmap(ConfigMapState::Loaded);
                    } else {
                        tracing::error!(
                            "ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} does not exist; no client certificate is trusted"
                        );
                        readiness.set_configmap(ConfigMapState::Missing);
                    }
                }
            }
            Ok(Event::Delete(_)) => {
                // kube-apiserver rewrites it shortly; dropping trust meanwhile would only
                // break the aggregator's requests.
                tracing::warn!(
                    "ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} was deleted; the previous configuration stays in force"
                );
            }
            Err(error) if is_forbidden(&error) => {
                // Once per transition; the backoff retries every 30 s at most.
                if readiness.configmap_state() != ConfigMapState::Forbidden {
                    tracing::error!(%error, "reading ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} is forbidden");
                }
                readiness.set_configmap(ConfigMapState::Forbidden);
            }
            Err(error) => {
                tracing::warn!(%error, "watching ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::apiserver::auth::config::tests::ca_pem;
    use crate::apiserver::auth::config::{
        CLIENT_CA_BUNDLE, KEY_ALLOWED_NAMES, KEY_CLIENT_CA, KEY_REQUESTHEADER_CA,
        REQUESTHEADER_BUNDLE,
    };
    use crate::apiserver::auth::{AuthOptions, DelegatingAuth};
    use crate::tls::ClientCaHandle;

    /// A client that is never used to connect (nothing listens on the discard port).
    fn offline_client() -> kube::Client {
        let url = "http://127.0.0.1:9".parse().expect("url");
        kube::Client::try_from(kube::Config::new(url)).expect("client")
    }

    fn configmap(pairs: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn applies_changes_once_and_keeps_the_last_good_version() {
        let ca = ClientCaHandle::new();
        let auth = DelegatingAuth::new(offline_client(), ca.clone(), AuthOptions::default());
        let (rh, cca) = (ca_pem("front-proxy-ca"), ca_pem("cluster-ca"));
        let good = configmap(&[
            (KEY_REQUESTHEADER_CA, &rh),
            (KEY_CLIENT_CA, &cca),
            (KEY_ALLOWED_NAMES, r#"["front-proxy-client"]"#),
        ]);

        on_configmap(&auth, &good);
        assert_eq!(
            ca.bundle_names(),
            vec![REQUESTHEADER_BUNDLE, CLIENT_CA_BUNDLE]
        );
        assert_eq!(auth.config().allowed_names, vec!["front-proxy-client"]);
        assert!(auth.readiness().borrow().ready);
        assert!(
            !apply_configmap(&auth, &good).expect("still valid"),
            "unchanged"
        );
        assert_eq!(auth.stats().configmap_applied, 1);

        // A broken update: logged, counted, previous configuration and readiness kept.
        let bad = configmap(&[
            (KEY_REQUESTHEADER_CA, &rh),
            (KEY_ALLOWED_NAMES, "front-proxy-client"),
        ]);
        on_configmap(&auth, &bad);
        assert_eq!(auth.stats().configmap_rejected, 1);
        assert_eq!(auth.config().allowed_names, vec!["front-proxy-client"]);
        assert_eq!(auth.config().client_ca_pem.as_deref(), Some(cca.as_str()));
        assert_eq!(
            ca.bundle_names(),
            vec![REQUESTHEADER_BUNDLE, CLIENT_CA_BUNDLE]
        );
        assert!(auth.readiness().borrow().ready);

        // A rotation: the new front-proxy CA replaces the bundle.
        let rotated = format!("{rh}{}", ca_pem("front-proxy-ca-2"));
        let next = configmap(&[(KEY_REQUESTHEADER_CA, &rotated), (KEY_CLIENT_CA, &cca)]);
        assert!(apply_configmap(&auth, &next).expect("valid"));
        assert_eq!(
            auth.config().requestheader_ca_pem.as_deref(),
            Some(rotated.as_str())
        );
        assert!(auth.config().allowed_names.is_empty());
        assert_eq!(auth.stats().configmap_applied, 2);
    }

    #[tokio::test]
    async fn an_unusable_first_version_is_a_readiness_reason() {
        let ca = ClientCaHandle::new();
        let auth = DelegatingAuth::new(offline_client(), ca.clone(), AuthOptions::default());
        on_configmap(&auth, &configmap(&[(KEY_REQUESTHEADER_CA, "garbage")]));
        let readiness = auth.readiness().borrow().clone();
        assert!(!readiness.ready);
        assert!(
            readiness.reason.contains("requestheader-client-ca-file"),
            "{}",
            readiness.reason
        );
        assert!(ca.bundle_names().is_empty());
        assert!(!auth.trust().loaded);
    }

    #[test]
    fn forbidden_watch_errors() {
        let status = |code: u16| {
            Box::new(kube::core::Status {
                code,
                ..Default::default()
            })
        };
        assert!(is_forbidden(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(403))
        )));
        assert!(is_forbidden(&watcher::Error::WatchError(status(403))));
        assert!(!is_forbidden(&watcher::Error::WatchError(status(410))));
        assert!(!is_forbidden(&watcher::Error::NoResourceVersion));
    }
}
