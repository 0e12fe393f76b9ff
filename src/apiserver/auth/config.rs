//! The trust configuration kube-apiserver publishes in ConfigMap
//! `kube-system/extension-apiserver-authentication`: which CAs sign client certificates,
//! which front-proxy certificates may assert identities, and in which headers.
//!
//! Pure: parsing and validation only; [`super::watcher`] feeds it and applies the result.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use rustls_pki_types::CertificateDer;

use crate::tls::{CaBundle, TlsError};

/// Namespace of the trust ConfigMap.
pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
/// Name of the trust ConfigMap.
pub const CONFIGMAP_NAME: &str = "extension-apiserver-authentication";

/// ConfigMap key: CA bundle for ordinary client certificates (CN = user, O = groups).
pub(crate) const KEY_CLIENT_CA: &str = "client-ca-file";
/// ConfigMap key: CA bundle for the front proxy (the aggregator's client certificate).
pub const KEY_REQUESTHEADER_CA: &str = "requestheader-client-ca-file";
/// ConfigMap key: JSON array of CNs a front-proxy certificate may carry (empty = any).
pub const KEY_ALLOWED_NAMES: &str = "requestheader-allowed-names";
/// ConfigMap key: JSON array of user-name headers, first non-empty wins.
pub(crate) const KEY_USERNAME_HEADERS: &str = "requestheader-username-headers";
/// ConfigMap key: JSON array of group headers, all values of all of them count.
pub(crate) const KEY_GROUP_HEADERS: &str = "requestheader-group-headers";
/// ConfigMap key: JSON array of header prefixes that carry `user.Info.Extra`.
pub(crate) const KEY_EXTRA_PREFIXES: &str = "requestheader-extra-headers-prefix";
/// ConfigMap key: JSON array of UID headers (kube ≥ 1.32 with `RemoteRequestHeaderUID`).
pub(crate) const KEY_UID_HEADERS: &str = "requestheader-uid-headers";

/// Name of the [`CaBundle`] built from `requestheader-client-ca-file`, as reported in
/// [`PeerIdentity::Certificate::bundle`](crate::tls::PeerIdentity).
pub const REQUESTHEADER_BUNDLE: &str = "requestheader";
/// Name of the [`CaBundle`] built from `client-ca-file`.
pub const CLIENT_CA_BUNDLE: &str = "client-ca";

/// Header names used when the ConfigMap does not name any (kube's delegating defaults).
/// UID headers have no default: kube only trusts them when configured explicitly.
pub(crate) const DEFAULT_USERNAME_HEADERS: &[&str] = &["x-remote-user"];
pub(crate) const DEFAULT_GROUP_HEADERS: &[&str] = &["x-remote-group"];
pub(crate) const DEFAULT_EXTRA_PREFIXES: &[&str] = &["x-remote-extra-"];

/// Why the ConfigMap could not be used. The previous configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "key {key:?} of ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} is not a JSON array of strings ({error}): {value:?}"
    )]
    InvalidJson {
        key: &'static str,
        value: String,
        error: String,
    },
    #[error(
        "key {key:?} of ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} names an empty header"
    )]
    EmptyHeader { key: &'static str },
    #[error(
        "key {key:?} of ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} names an invalid HTTP header {name:?}"
    )]
    InvalidHeader { key: &'static str, name: String },
    #[error("key {key:?} of ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}: {error}")]
    InvalidCa {
        key: &'static str,
        #[source]
        error: TlsError,
    },
}

/// The parsed ConfigMap. Header names and prefixes are trimmed and lower-cased (HTTP header
/// names are case-insensitive; `http::HeaderName` is lower-case).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// PEM of `client-ca-file`; `None` when absent or blank.
    pub client_ca_pem: Option<String>,
    /// PEM of `requestheader-client-ca-file`; `None` when absent or blank.
    pub requestheader_ca_pem: Option<String>,
    /// CNs a front-proxy certificate may carry; empty accepts any certificate of that CA.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_prefixes: Vec<String>,
    pub uid_headers: Vec<String>,
}

impl AuthConfig {
    /// Parses a ConfigMap's `data`. A list key that is absent (or an empty string) takes
    /// kube's default header names; a present one — even `[]` or `null` — is taken as is,
    /// so an operator can switch a header off. Empty or invalid header names are errors,
    /// as in kube's `trimHeaders`.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        Ok(Self {
            client_ca_pem: pem_value(data, KEY_CLIENT_CA),
            requestheader_ca_pem: pem_value(data, KEY_REQUESTHEADER_CA),
            // CNs are compared exactly, as kube does: no trimming or case folding.
            allowed_names: string_list(data, KEY_ALLOWED_NAMES)?.unwrap_or_default(),
            username_headers: header_list(data, KEY_USERNAME_HEADERS, DEFAULT_USERNAME_HEADERS)?,
            group_headers: header_list(data, KEY_GROUP_HEADERS, DEFAULT_GROUP_HEADERS)?,
            extra_prefixes: header_list(data, KEY_EXTRA_PREFIXES, DEFAULT_EXTRA_PREFIXES)?,
            uid_headers: header_list(data, KEY_UID_HEADERS, &[])?,
        })
    }

    /// [`from_data`](Self::from_data) of a ConfigMap (no `data` = every key absent).
    pub fn from_configmap(cm: &ConfigMap) -> Result<Self, ConfigError> {
        match &cm.data {
            Some(data) => Self::from_data(data),
            None => Self::from_data(&BTreeMap::new()),
        }
    }

    /// The CA bundles for [`ClientCaHandle::set_bundles`](crate::tls::ClientCaHandle),
    /// request-header first: a certificate is attributed to the first bundle that verifies
    /// it, and kube's delegating authenticator also tries the front proxy before plain
    /// client certificates, so a certificate both CAs vouch for acts as the front proxy.
    pub fn ca_bundles(&self) -> Result<TrustBundles, ConfigError> {
        let requestheader = self
            .requestheader_ca_pem
            .as_deref()
            .map(|pem| {
                CaBundle::from_pem(REQUESTHEADER_BUNDLE, pem).map_err(|error| {
                    ConfigError::InvalidCa {
                        key: KEY_REQUESTHEADER_CA,
                        error,
                    }
                })
            })
            .transpose()?;
        let client_ca = self
            .client_ca_pem
            .as_deref()
            .map(|pem| {
                CaBundle::from_pem(CLIENT_CA_BUNDLE, pem).map_err(|error| ConfigError::InvalidCa {
                    key: KEY_CLIENT_CA,
                    error,
                })
            })
            .transpose()?;
        let requestheader_within_client_ca = match (&requestheader, &client_ca) {
            (Some(rh), Some(cca)) => is_subset(rh.certificates(), cca.certificates()),
            _ => false,
        };
        Ok(TrustBundles {
            bundles: requestheader.into_iter().chain(client_ca).collect(),
            requestheader_within_client_ca,
        })
    }
}

/// The bundles of one [`AuthConfig`], in the order to install them.
#[derive(Debug, Clone)]
pub struct TrustBundles {
    pub bundles: Vec<CaBundle>,
    /// Every request-header CA is also a client CA. The TLS layer reports only the first
    /// bundle that verified a certificate, so this is how we know that a certificate it
    /// attributes to the front proxy would also pass as a plain client certificate (kube
    /// falls back to that when the front-proxy checks fail). Only a subset makes it
    /// certain; any other overlap is treated as "not verified", which can only refuse.
    pub requestheader_within_client_ca: bool,
}

fn is_subset(small: &[CertificateDer<'static>], big: &[CertificateDer<'static>]) -> bool {
    small
        .iter()
        .all(|cert| big.iter().any(|other| other.as_ref() == cert.as_ref()))
}

fn pem_value(data: &BTreeMap<String, String>, key: &str) -> Option<String> {
    data.get(key).filter(|pem| !pem.trim().is_empty()).cloned()
}

/// `None` when the key is absent or an empty string (kube's `deserializeStrings` treats
/// both as "no value"); JSON `null` is an empty list, as Go's `json.Unmarshal` makes it.
fn string_list(
    data: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(raw) = data.get(key).filter(|raw| !raw.trim().is_empty()) else {
        return Ok(None);
    };
    let parsed: Option<Vec<String>> =
        serde_json::from_str(raw).map_err(|e| ConfigError::InvalidJson {
            key,
            value: raw.clone(),
            error: e.to_string(),
        })?;
    Ok(Some(parsed.unwrap_or_default()))
}

fn header_list(
    data: &BTreeMap<String, String>,
    key: &'static str,
    default: &[&str],
) -> Result<Vec<String>, ConfigError> {
    let Some(names) = string_list(data, key)? else {
        return Ok(default.iter().map(|name| (*name).to_owned()).collect());
    };
    names
        .iter()
        .map(|name| {
            let trimmed = name.trim();
            if trimmed.is_empty() {
                return Err(ConfigError::EmptyHeader { key });
            }
            // Rejecting here means a typo is reported once, at load time, rather than the
            // header silently never matching.
            http::HeaderName::from_bytes(trimmed.as_bytes())
                .map(|header| header.as_str().to_owned())
                .map_err(|_| ConfigError::InvalidHeader {
                    key,
                    name: name.clone(),
                })
        })
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A self-signed CA certificate named `cn`, PEM (also the watcher tests' CAs).
    pub(in crate::apiserver::auth) fn ca_pem(cn: &str) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("self-signed").pem()
    }

    #[test]
    fn kubeadm_shape() {
        let rh = ca_pem("front-proxy-ca");
        let cca = ca_pem("kubernetes");
        let cfg = AuthConfig::from_data(&data(&[
            (KEY_CLIENT_CA, &cca),
            (KEY_REQUESTHEADER_CA, &rh),
            (KEY_ALLOWED_NAMES, r#"["front-proxy-client"]"#),
            (KEY_USERNAME_HEADERS, r#"["X-Remote-User"]"#),
            (KEY_GROUP_HEADERS, r#"["X-Remote-Group"]"#),
            (KEY_EXTRA_PREFIXES, r#"["X-Remote-Extra-"]"#),
        ]))
        .expect("valid");
        assert_eq!(cfg.client_ca_pem.as_deref(), Some(cca.as_str()));
        assert_eq!(cfg.requestheader_ca_pem.as_deref(), Some(rh.as_str()));
        assert_eq!(cfg.allowed_names, vec!["front-proxy-client"]);
        assert_eq!(cfg.username_headers, vec!["x-remote-user"]);
        assert_eq!(cfg.group_headers, vec!["x-remote-group"]);
        assert_eq!(cfg.extra_prefixes, vec!["x-remote-extra-"]);
        assert!(cfg.uid_headers.is_empty());

        let trust = cfg.ca_bundles().expect("bundles");
        let names: Vec<&str> = trust.bundles.iter().map(CaBundle::name).collect();
        assert_eq!(names, vec![REQUESTHEADER_BUNDLE, CLIENT_CA_BUNDLE]);
        assert!(!trust.requestheader_within_client_ca);
    }

    #[test]
    fn absent_keys_take_defaults_and_uid_has_none() {
        let cfg = AuthConfig::from_data(&BTreeMap::new()).expect("valid");
        assert_eq!(cfg.client_ca_pem, None);
        assert_eq!(cfg.requestheader_ca_pem, None);
        assert!(cfg.allowed_names.is_empty());
        assert_eq!(cfg.username_headers, vec!["x-remote-user"]);
        assert_eq!(cfg.group_headers, vec!["x-remote-group"]);
        assert_eq!(cfg.extra_prefixes, vec!["x-remote-extra-"]);
        assert!(cfg.uid_headers.is_empty());
        assert!(cfg.ca_bundles().expect("bundles").bundles.is_empty());
        assert_eq!(
            AuthConfig::from_configmap(&ConfigMap::default()).expect("valid"),
            cfg
        );
    }

    #[test]
    fn empty_strings_count_as_absent() {
        let cfg = AuthConfig::from_data(&data(&[
            (KEY_CLIENT_CA, "  \n"),
            (KEY_USERNAME_HEADERS, ""),
            (KEY_ALLOWED_NAMES, ""),
        ]))
        .expect("valid");
        assert_eq!(cfg.client_ca_pem, None);
        assert_eq!(cfg.username_headers, vec!["x-remote-user"]);
        assert!(cfg.allowed_names.is_empty());
    }

    #[test]
    fn explicit_lists_replace_defaults() {
        let cfg = AuthConfig::from_data(&data(&[
            (
                KEY_USERNAME_HEADERS,
                r#"[" X-Proxy-User ", "X-Remote-User"]"#,
            ),
            (KEY_GROUP_HEADERS, "[]"),
            (KEY_EXTRA_PREFIXES, "null"),
            (KEY_UID_HEADERS, r#"["X-Remote-Uid"]"#),
            (KEY_ALLOWED_NAMES, r#"["a", "B c"]"#),
        ]))
        .expect("valid");
        assert_eq!(cfg.username_headers, vec!["x-proxy-user", "x-remote-user"]);
        assert!(cfg.group_headers.is_empty());
        assert!(cfg.extra_prefixes.is_empty());
        assert_eq!(cfg.uid_headers, vec!["x-remote-uid"]);
        assert_eq!(cfg.allowed_names, vec!["a", "B c"]);
    }

    #[test]
    fn malformed_values_are_clear_errors() {
        let cases: &[(&str, &str, &str)] = &[
            (
                KEY_ALLOWED_NAMES,
                "front-proxy-client",
                r#"key "requestheader-allowed-names" of ConfigMap kube-system/extension-apiserver-authentication is not a JSON array of strings"#,
            ),
            (
                KEY_GROUP_HEADERS,
                r#"{"a":1}"#,
                r#"key "requestheader-group-headers" of ConfigMap"#,
            ),
            (
                KEY_USERNAME_HEADERS,
                "[1, 2]",
                "is not a JSON array of strings",
            ),
            (
                KEY_USERNAME_HEADERS,
                r#"["  "]"#,
                r#"key "requestheader-username-headers" of ConfigMap kube-system/extension-apiserver-authentication names an empty header"#,
            ),
            (
                KEY_EXTRA_PREFIXES,
                r#"["X Remote"]"#,
                r#"names an invalid HTTP header "X Remote""#,
            ),
        ];
        for (key, value, expected) in cases {
            let err = AuthConfig::from_data(&data(&[(key, value)])).expect_err(value);
            let text = err.to_string();
            assert!(text.contains(expected), "{key}={value}: {text}");
        }
    }

    #[test]
    fn bad_pem_is_reported_with_its_key() {
        let cfg = AuthConfig::from_data(&data(&[(KEY_REQUESTHEADER_CA, "not a certificate")]))
            .expect("parses; PEM is checked when building bundles");
        let err = cfg.ca_bundles().expect_err("no certificate");
        let text = err.to_string();
        assert!(text.contains("requestheader-client-ca-file"), "{text}");
    }

    #[test]
    fn several_cas_in_one_bundle() {
        let both = format!("{}{}", ca_pem("old"), ca_pem("new"));
        let cfg = AuthConfig::from_data(&data(&[(KEY_REQUESTHEADER_CA, &both)])).expect("valid");
        let trust = cfg.ca_bundles().expect("bundles");
        assert_eq!(trust.bundles.len(), 1);
        assert_eq!(trust.bundles[0].certificates().len(), 2);
    }

    #[test]
    fn requestheader_within_client_ca_only_for_a_subset() {
        let a = ca_pem("a");
        let b = ca_pem("b");
        let ab = format!("{a}{b}");
        let within = |rh: &str, cca: &str| {
            AuthConfig::from_data(&data(&[(KEY_REQUESTHEADER_CA, rh), (KEY_CLIENT_CA, cca)]))
                .expect("valid")
                .ca_bundles()
                .expect("bundles")
                .requestheader_within_client_ca
        };
        assert!(within(&a, &a));
        assert!(within(&a, &ab));
        assert!(!within(&ab, &a));
        assert!(!within(&a, &b));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Arbitrary ConfigMap content never panics; whatever parses is usable as header
            /// names (lower-case, non-empty).
            #[test]
            fn arbitrary_values(
                values in proptest::collection::vec(".{0,40}", 7),
            ) {
                let keys = [
                    KEY_CLIENT_CA, KEY_REQUESTHEADER_CA, KEY_ALLOWED_NAMES, KEY_USERNAME_HEADERS,
                    KEY_GROUP_HEADERS, KEY_EXTRA_PREFIXES, KEY_UID_HEADERS,
                ];
                let data: BTreeMap<String, String> = keys
                    .iter()
                    .zip(&values)
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect();
                if let Ok(cfg) = AuthConfig::from_data(&data) {
                    for name in cfg.username_headers.iter().chain(&cfg.group_headers)
                        .chain(&cfg.extra_prefixes).chain(&cfg.uid_headers)
                    {
                        prop_assert!(!name.is_empty());
                        prop_assert_eq!(name, &name.to_ascii_lowercase());
                        prop_assert!(http::HeaderName::from_bytes(name.as_bytes()).is_ok());
                    }
                    let _ = cfg.ca_bundles();
                }
            }

            #[test]
            fn json_lists_of_header_tokens_parse(
                names in proptest::collection::vec("[A-Za-z0-9-]{1,20}", 0..5),
            ) {
                let json = serde_json::to_string(&names).expect("json");
                let cfg = AuthConfig::from_data(&data(&[(KEY_GROUP_HEADERS, &json)]))
                    .expect("valid header names");
                let lower: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
                prop_assert_eq!(cfg.group_headers, lower);
            }
        }
    }
}
