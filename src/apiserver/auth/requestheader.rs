//! Identity from the TLS client certificate and the front proxy's headers, following kube's
//! delegating authenticator (`authenticatorfactory/delegating.go`): request-header first,
//! then `client-ca-file` x509, then a bearer token (done by the caller, through TokenReview),
//! first success wins; if none succeeds, any failure is a 401 and otherwise the caller is
//! anonymous.
//!
//! Pure: no I/O, so the whole matrix is tested with vectors below.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::apiserver::auth::config::{AuthConfig, CLIENT_CA_BUNDLE, REQUESTHEADER_BUNDLE};
use crate::apiserver::seams::UserInfo;
use crate::tls::PeerIdentity;

/// Group every authenticated user gets (`user.AllAuthenticated`).
pub(crate) const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// Group of the anonymous user (`user.AllUnauthenticated`).
pub(crate) const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// The anonymous user's name (`user.Anonymous`).
pub(crate) const ANONYMOUS_USER: &str = "system:anonymous";

/// What the certificate-based authenticators concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertOutcome {
    /// Authenticated (without `system:authenticated` yet; see [`with_authenticated_group`]).
    User(UserInfo),
    /// Not authenticated by a certificate. A bearer token may still succeed; if it does not,
    /// any error here makes the request a 401, and none makes it anonymous.
    NotAuthenticated { errors: Vec<String> },
}

/// Runs the request-header and client-certificate authenticators.
///
/// `requestheader_within_client_ca` comes from
/// [`TrustBundles`](crate::apiserver::auth::config::TrustBundles): the TLS layer names
/// only the first bundle that verified the certificate, so whether a front-proxy certificate
/// would also pass `client-ca-file` is inferred from the bundles' contents.
pub(crate) fn authenticate_certificate(
    peer: &PeerIdentity,
    headers: &HeaderMap,
    config: &AuthConfig,
    requestheader_within_client_ca: bool,
) -> CertOutcome {
    let mut errors = Vec::new();
    let PeerIdentity::Certificate {
        bundle,
        common_name,
        organizations,
    } = peer
    else {
        return CertOutcome::NotAuthenticated { errors };
    };
    let by_requestheader = bundle == REQUESTHEADER_BUNDLE;
    let by_client_ca =
        bundle == CLIENT_CA_BUNDLE || (by_requestheader && requestheader_within_client_ca);

    // Front proxy: the certificate must come from its CA and carry an allowed CN; then the
    // headers name the user, and without a user header this authenticator passes.
    if config.requestheader_ca_pem.is_some() {
        if !by_requestheader {
            errors.push(format!(
                "x509: certificate with cn={common_name} is not signed by the requestheader-client-ca-file CA"
            ));
        } else if !config.allowed_names.is_empty()
            && !config.allowed_names.iter().any(|name| name == common_name)
        {
            errors.push(format!(
                "x509: subject with cn={common_name} is not in the allowed list"
            ));
        } else if let Some(user) = user_from_headers(headers, config) {
            return CertOutcome::User(user);
        }
    }

    // Plain client certificate: CN is the user, O the groups; an empty CN authenticates
    // nobody (kube's CommonNameUserConversion).
    if config.client_ca_pem.is_some() {
        if !by_client_ca {
            errors.push(format!(
                "x509: certificate with cn={common_name} is not signed by the client-ca-file CA"
            ));
        } else if !common_name.is_empty() {
            return CertOutcome::User(UserInfo {
                name: common_name.clone(),
                groups: organizations.clone(),
                ..Default::default()
            });
        }
    }
    CertOutcome::NotAuthenticated { errors }
}

/// The identity the front proxy asserts, or `None` without a (non-empty) user header.
pub(crate) fn user_from_headers(headers: &HeaderMap, config: &AuthConfig) -> Option<UserInfo> {
    let name = first_value(headers, &config.username_headers)?;
    let uid = first_value(headers, &config.uid_headers).unwrap_or_default();
    let groups = config
        .group_headers
        .iter()
        .flat_map(|header| headers.get_all(header.as_str()))
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .filter(|value| !value.is_empty())
        .collect();
    Some(UserInfo {
        name,
        uid,
        groups,
        extra: extras(headers, &config.extra_prefixes),
    })
}

/// First value of the first header (in configured order) whose first value is non-empty,
/// as Go's `Header.Get` loop does.
fn first_value(headers: &HeaderMap, names: &[String]) -> Option<String> {
    names
        .iter()
        .filter_map(|name| headers.get(name.as_str()))
        // Go keeps header bytes as they come; a lossy UTF-8 view keeps every valid name
        // intact and only mangles bytes no Kubernetes name can contain.
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .find(|value| !value.is_empty())
}

/// Every header with a configured prefix: the rest of its (lower-case) name, percent-decoded,
/// is the key; all its values are kept, empty ones too, as kube does.
fn extras(headers: &HeaderMap, prefixes: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for prefix in prefixes {
        for name in headers.keys() {
            let Some(suffix) = name.as_str().strip_prefix(prefix.as_str()) else {
                continue;
            };
            let values = headers
                .get_all(name)
                .iter()
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
            extra
                .entry(unescape_extra_key(suffix))
                .or_default()
                .extend(values);
        }
    }
    extra
}

/// Percent-decodes an extra key like Go's `url.PathUnescape`; a malformed escape (or bytes
/// that are not UTF-8) keeps the key as sent, so the value is still recorded.
pub(crate) fn unescape_extra_key(encoded: &str) -> String {
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
            match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(hi), Some(lo)) => {
                    // Two hex digits make at most 0xff, so the cast cannot truncate.
                    decoded.push((hi * 16 + lo) as u8);
                    i += 3;
                }
                _ => return encoded.to_owned(),
            }
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).unwrap_or_else(|_| encoded.to_owned())
}

/// The bearer token of `Authorization: Bearer <token>`, parsed as kube does: the scheme is
/// case-insensitive, the value is trimmed, and an empty token (or a second space before
/// the token) counts as no token at all.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let mut parts = value.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Adds `system:authenticated` unless the user is anonymous or already carries it or
/// `system:unauthenticated` (kube's `AuthenticatedGroupAdder`).
pub(crate) fn with_authenticated_group(mut user: UserInfo) -> UserInfo {
    if lacks_authenticated_group(&user) {
        user.groups.push(AUTHENTICATED_GROUP.to_owned());
    }
    user
}

/// Whether [`with_authenticated_group`] would add the group.
pub(crate) fn lacks_authenticated_group(user: &UserInfo) -> bool {
    let marked = user
        .groups
        .iter()
        .any(|g| g == AUTHENTICATED_GROUP || g == UNAUTHENTICATED_GROUP);
    user.name != ANONYMOUS_USER && !marked
}

/// [`with_authenticated_group`] for a shared identity: copied only when the group is added
/// (a TokenReview's user usually has it already).
pub(crate) fn shared_with_authenticated_group(user: Arc<UserInfo>) -> Arc<UserInfo> {
    if lacks_authenticated_group(&user) {
        Arc::new(with_authenticated_group(Arc::unwrap_or_clone(user)))
    } else {
        user
    }
}

/// Several authenticator errors as one 401 reason, formatted like kube's aggregate errors.
pub(crate) fn aggregate_errors(errors: &[String]) -> String {
    match errors {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn kubeadm() -> AuthConfig {
        AuthConfig {
            client_ca_pem: Some("cluster CA".into()),
            requestheader_ca_pem: Some("front-proxy CA".into()),
            allowed_names: vec!["front-proxy-client".into()],
            username_headers: vec!["x-remote-user".into()],
            group_headers: vec!["x-remote-group".into()],
            extra_prefixes: vec!["x-remote-extra-".into()],
            uid_headers: vec![],
        }
    }

    fn front_proxy(cn: &str) -> PeerIdentity {
        PeerIdentity::Certificate {
            bundle: REQUESTHEADER_BUNDLE.into(),
            common_name: cn.into(),
            organizations: vec![],
        }
    }

    fn client_cert(cn: &str, orgs: &[&str]) -> PeerIdentity {
        PeerIdentity::Certificate {
            bundle: CLIENT_CA_BUNDLE.into(),
            common_name: cn.into(),
            organizations: orgs.iter().map(|o| (*o).to_owned()).collect(),
        }
    }

    /// Headers as a proxy sends them; names in any case, repeated names kept in order.
    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            let name = http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
            map.append(name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    fn user(name: &str, groups: &[&str], extra: &[(&str, &[&str])]) -> UserInfo {
        UserInfo {
            name: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            extra: extra
                .iter()
                .map(|(k, vs)| {
                    (
                        (*k).to_owned(),
                        vs.iter().map(|v| (*v).to_owned()).collect(),
                    )
                })
                .collect(),
        }
    }

    fn not_authenticated(errors: &[&str]) -> CertOutcome {
        CertOutcome::NotAuthenticated {
            errors: errors.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    #[test]
    fn hpa_through_the_aggregator() {
        // What kube-apiserver 1.20 sent for the HPA controller (k8s-control-plane.md).
        let h = headers(&[
            (
                "X-Remote-User",
                "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
            ),
            ("X-Remote-Group", "system:serviceaccounts"),
            ("X-Remote-Group", "system:serviceaccounts:kube-system"),
            ("X-Remote-Group", "system:authenticated"),
        ]);
        assert_eq!(
            authenticate_certificate(&front_proxy("front-proxy-client"), &h, &kubeadm(), false),
            CertOutcome::User(user(
                "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
                &[
                    "system:serviceaccounts",
                    "system:serviceaccounts:kube-system",
                    "system:authenticated"
                ],
                &[]
            ))
        );
    }

    #[test]
    fn escaped_extras_and_case_insensitive_names() {
        let h = headers(&[
            ("x-remote-user", "alice"),
            ("X-REMOTE-EXTRA-Foo%2fbar", "one"),
            ("X-Remote-Extra-Foo%2Fbar", "two"),
            ("X-Remote-Extra-Scopes", "a"),
            ("X-Remote-Extra-Scopes", ""),
            ("X-Remote-Extra-Scopes", "b"),
            ("X-Remote-Extra-Bad%zzKey", "kept"),
            ("X-Remote-Extra-%41cme", "upper after decoding"),
            ("X-Remote-Extras", "not the prefix"),
        ]);
        let got =
            authenticate_certificate(&front_proxy("front-proxy-client"), &h, &kubeadm(), false);
        assert_eq!(
            got,
            CertOutcome::User(user(
                "alice",
                &[],
                &[
                    ("foo/bar", &["one", "two"]),
                    ("scopes", &["a", "", "b"]),
                    ("bad%zzkey", &["kept"]),
                    ("Acme", &["upper after decoding"]),
                ]
            ))
        );
    }

    #[test]
    fn first_non_empty_user_header_wins_and_groups_span_headers() {
        let cfg = AuthConfig {
            username_headers: vec!["x-proxy-user".into(), "x-remote-user".into()],
            group_headers: vec!["x-proxy-group".into(), "x-remote-group".into()],
            uid_headers: vec!["x-remote-uid".into()],
            ..kubeadm()
        };
        let h = headers(&[
            ("X-Proxy-User", ""),
            ("X-Remote-User", "bob"),
            ("X-Remote-User", "ignored second value"),
            ("X-Remote-Group", "g2"),
            ("X-Proxy-Group", "g1"),
            ("X-Proxy-Group", ""),
            ("X-Remote-Uid", "1234"),
        ]);
        let CertOutcome::User(got) =
            authenticate_certificate(&front_proxy("front-proxy-client"), &h, &cfg, false)
        else {
            panic!("expected a user");
        };
        assert_eq!(got.name, "bob");
        assert_eq!(got.uid, "1234");
        assert_eq!(got.groups, vec!["g1", "g2"]);
    }

    #[test]
    fn uid_headers_are_ignored_unless_configured() {
        let h = headers(&[("X-Remote-User", "bob"), ("X-Remote-Uid", "1234")]);
        let CertOutcome::User(got) =
            authenticate_certificate(&front_proxy("front-proxy-client"), &h, &kubeadm(), false)
        else {
            panic!("expected a user");
        };
        assert_eq!(got.uid, "");
        assert!(got.extra.is_empty());
    }

    #[test]
    fn allowed_names() {
        let h = headers(&[("X-Remote-User", "alice")]);
        // Not in the list: rejected, and the certificate is not a cluster client cert.
        assert_eq!(
            authenticate_certificate(&front_proxy("someone-else"), &h, &kubeadm(), false),
            not_authenticated(&[
                "x509: subject with cn=someone-else is not in the allowed list",
                "x509: certificate with cn=someone-else is not signed by the client-ca-file CA",
            ])
        );
        // An empty list accepts any certificate of the front-proxy CA.
        let any = AuthConfig {
            allowed_names: vec![],
            ..kubeadm()
        };
        assert_eq!(
            authenticate_certificate(&front_proxy("someone-else"), &h, &any, false),
            CertOutcome::User(user("alice", &[], &[]))
        );
        // CNs compare exactly.
        assert!(matches!(
            authenticate_certificate(&front_proxy("Front-Proxy-Client"), &h, &kubeadm(), false),
            CertOutcome::NotAuthenticated { .. }
        ));
    }

    #[test]
    fn front_proxy_without_user_header() {
        // Not authenticated by request-header; the client-ca check then fails, which kube
        // turns into a 401 unless a bearer token succeeds.
        assert_eq!(
            authenticate_certificate(
                &front_proxy("front-proxy-client"),
                &headers(&[("X-Remote-Group", "g")]),
                &kubeadm(),
                false
            ),
            not_authenticated(&[
                "x509: certificate with cn=front-proxy-client is not signed by the client-ca-file CA"
            ])
        );
        // Without client-ca-file there is nothing to fail: anonymous.
        let no_client_ca = AuthConfig {
            client_ca_pem: None,
            ..kubeadm()
        };
        assert_eq!(
            authenticate_certificate(
                &front_proxy("front-proxy-client"),
                &headers(&[("X-Remote-User", "")]),
                &no_client_ca,
                false
            ),
            not_authenticated(&[])
        );
    }

    #[test]
    fn shared_ca_falls_back_to_the_client_certificate() {
        // One CA serves both purposes: a disallowed CN is still a valid client cert.
        assert_eq!(
            authenticate_certificate(
                &front_proxy("kubernetes-admin"),
                &headers(&[("X-Remote-User", "mallory")]),
                &kubeadm(),
                true
            ),
            CertOutcome::User(user("kubernetes-admin", &[], &[]))
        );
    }

    #[test]
    fn client_certificate() {
        let h = headers(&[("X-Remote-User", "ignored: not a front-proxy cert")]);
        assert_eq!(
            authenticate_certificate(
                &client_cert("kubernetes-admin", &["system:masters", "ops"]),
                &h,
                &kubeadm(),
                false
            ),
            CertOutcome::User(user("kubernetes-admin", &["system:masters", "ops"], &[]))
        );
        // Empty CN: nobody, with the request-header mismatch as the reason.
        assert_eq!(
            authenticate_certificate(&client_cert("", &["g"]), &h, &kubeadm(), false),
            not_authenticated(&[
                "x509: certificate with cn= is not signed by the requestheader-client-ca-file CA"
            ])
        );
        // Without a request-header CA there is no mismatch to report.
        let no_rh = AuthConfig {
            requestheader_ca_pem: None,
            ..kubeadm()
        };
        assert_eq!(
            authenticate_certificate(&client_cert("", &[]), &h, &no_rh, false),
            not_authenticated(&[])
        );
    }

    #[test]
    fn no_certificate() {
        let h = headers(&[
            ("X-Remote-User", "forged"),
            ("X-Remote-Group", "system:masters"),
        ]);
        assert_eq!(
            authenticate_certificate(&PeerIdentity::Anonymous, &h, &kubeadm(), false),
            not_authenticated(&[])
        );
    }

    #[test]
    fn unescape_like_go_path_unescape() {
        let cases = [
            ("foo%2fbar", "foo/bar"),
            ("plain", "plain"),
            ("a+b", "a+b"),
            ("%e2%9c%93", "\u{2713}"),
            ("trailing%", "trailing%"),
            ("short%2", "short%2"),
            ("bad%g1", "bad%g1"),
            ("not-utf8%ff", "not-utf8%ff"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(unescape_extra_key(input), expected, "{input}");
        }
    }

    #[test]
    fn bearer_tokens() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("  Bearer abc  ", Some("abc")),
            ("Bearer abc def", Some("abc")),
            ("Bearer  abc", None),
            ("Bearer ", None),
            ("Bearer", None),
            ("Basic dXNlcjpwYXNz", None),
            ("", None),
        ];
        for (value, expected) in cases {
            let h = headers(&[("Authorization", value)]);
            assert_eq!(bearer_token(&h), *expected, "{value:?}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn authenticated_group_added_once() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("alice", &["a"], &["a", "system:authenticated"]),
            ("alice", &[], &["system:authenticated"]),
            (
                "alice",
                &["system:authenticated", "a"],
                &["system:authenticated", "a"],
            ),
            (
                "odd",
                &["system:unauthenticated"],
                &["system:unauthenticated"],
            ),
            ("system:anonymous", &[], &[]),
        ];
        for (name, groups, expected) in cases {
            let got = with_authenticated_group(user(name, groups, &[]));
            assert_eq!(got.groups, *expected, "{name} {groups:?}");
            // The shared form gives the same groups, and copies only when it adds one.
            let shared = Arc::new(user(name, groups, &[]));
            let got = shared_with_authenticated_group(Arc::clone(&shared));
            assert_eq!(got.groups, *expected, "{name} {groups:?}");
            assert_eq!(
                Arc::ptr_eq(&got, &shared),
                groups.len() == expected.len(),
                "{name} {groups:?}"
            );
        }
    }

    #[test]
    fn aggregate_like_kube() {
        assert_eq!(aggregate_errors(&["one".into()]), "one");
        assert_eq!(aggregate_errors(&["a".into(), "b".into()]), "[a, b]");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn unescape_never_panics(key in ".*") {
                let _ = unescape_extra_key(&key);
            }

            /// Any key survives the trip through a (lower-cased) header name when every byte is
            /// escaped, as client-go's `SetAuthProxyHeaders` escapes what headers cannot carry.
            #[test]
            fn fully_escaped_keys_round_trip(key in "\\PC*") {
                let escaped: String = key.bytes().map(|b| format!("%{b:02x}")).collect();
                prop_assert_eq!(unescape_extra_key(&escaped), key);
            }

            #[test]
            fn bearer_tokens_are_single_non_empty_words(value in "[ -~]{0,64}") {
                let h = headers(&[("Authorization", &value)]);
                if let Some(token) = bearer_token(&h) {
                    prop_assert!(!token.is_empty());
                    prop_assert!(!token.contains(' '));
                    prop_assert!(value.contains(token));
                }
            }

            /// Whatever a proxy sends, the result is a user only with a non-empty name, and
            /// never for a connection without a front-proxy or client certificate.
            #[test]
            fn arbitrary_headers(
                pairs in proptest::collection::vec(
                    ("x-remote-(user|group|uid|extra-[a-z%0-9]{0,6})", "[ -~]{0,12}"),
                    0..8,
                ),
                bundle in prop_oneof![Just("requestheader"), Just("client-ca"), Just("other")],
                cn in "[a-z-]{0,20}",
            ) {
                let pairs: Vec<(&str, &str)> =
                    pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let h = headers(&pairs);
                let peer = PeerIdentity::Certificate {
                    bundle: bundle.to_owned(),
                    common_name: cn,
                    organizations: vec![],
                };
                let config = AuthConfig { allowed_names: vec![], ..kubeadm() };
                match authenticate_certificate(&peer, &h, &config, false) {
                    CertOutcome::User(user) => {
                        prop_assert!(!user.name.is_empty());
                        prop_assert!(bundle != "other");
                    }
                    CertOutcome::NotAuthenticated { .. } => {}
                }
                prop_assert_eq!(
                    authenticate_certificate(&PeerIdentity::Anonymous, &h, &config, false),
                    CertOutcome::NotAuthenticated { errors: vec![] }
                );
            }
        }
    }
}
