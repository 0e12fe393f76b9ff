//! Delegated authentication and authorization against a real kube-apiserver 1.20: the agent
//! reads `kube-system/extension-apiserver-authentication` with only the
//! `extension-apiserver-authentication-reader` Role, trusts the real front-proxy CA in real
//! TLS handshakes, picks up a CA rotation without restarting, reviews real service-account
//! tokens and asks RBAC through SubjectAccessReviews; and without its RBAC it says exactly
//! which binding is missing.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use datadog_cluster_agent::apiserver::auth::config::{
    CLIENT_CA_BUNDLE, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE, KEY_ALLOWED_NAMES, KEY_REQUESTHEADER_CA,
    REQUESTHEADER_BUNDLE,
};
use datadog_cluster_agent::apiserver::auth::readiness::{
    CONFIGMAP_FORBIDDEN, SAR_FORBIDDEN, TOKENREVIEW_FORBIDDEN,
};
use datadog_cluster_agent::apiserver::auth::{AuthOptions, DelegatingAuth, ReviewApi};
use datadog_cluster_agent::apiserver::seams::Readiness;
use datadog_cluster_agent::apiserver::seams::{
    Authentication, Authenticator, Authorizer, Decision, RequestAttributes, UserInfo,
};
use datadog_cluster_agent::tls::{ClientCaHandle, PeerIdentity, ServerCertResolver, ServerTls};
use e2e::controlplane::{
    ADMIN_USER, CertAuthority, ControlPlane, FRONT_PROXY_CLIENT_CN, IssuedCert,
    client_from_kubeconfig, eventually,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::api::{Api, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

const GENEROUS: Duration = Duration::from_secs(180);

/// The agent's auth stack plus a TLS server configuration verifying with its CA handle.
struct Harness {
    auth: Arc<DelegatingAuth>,
    ca: ClientCaHandle,
    tls: ServerTls,
    server_cert: CertificateDer<'static>,
    shutdown: CancellationToken,
}

impl Harness {
    fn start(client: kube::Client, options: AuthOptions) -> Result<Self> {
        let ca = ClientCaHandle::new();
        let auth = DelegatingAuth::new(client, ca.clone(), options);
        let shutdown = CancellationToken::new();
        auth.spawn(shutdown.clone());
        let resolver = ServerCertResolver::self_signed(&["localhost".to_owned()])?;
        let server_cert = resolver.current().cert[0].clone();
        let tls = ServerTls::new(resolver, Some(ca.clone()))?;
        Ok(Self {
            auth,
            ca,
            tls,
            server_cert,
            shutdown,
        })
    }

    /// A full TLS handshake over an in-memory pipe, presenting `identity`; the peer
    /// identity the server established, or the handshake error.
    async fn handshake(&self, identity: Option<&IssuedCert>) -> Result<PeerIdentity> {
        let mut roots = RootCertStore::empty();
        roots.add(self.server_cert.clone())?;
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots);
        let config = match identity {
            Some(issued) => builder.with_client_auth_cert(
                CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()?,
                PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?,
            )?,
            None => builder.with_no_client_auth(),
        };
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = TlsAcceptor::from(Arc::clone(self.tls.config()));
        let connector = TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from("localhost")?;
        let (server, client) = tokio::join!(
            acceptor.accept(server_io),
            connector.connect(name, client_io)
        );
        let server = server.context("server side of the handshake")?;
        client.context("client side of the handshake")?;
        Ok(self.tls.peer_identity(server.get_ref().1))
    }

    async fn authenticate(&self, peer: &PeerIdentity, headers: &[(&str, &str)]) -> Authentication {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        self.auth.authenticate(peer, &map).wait().await
    }

    async fn wait_ready(&self) -> Result<()> {
        let readiness = self.auth.readiness();
        let tracker = self.auth.readiness_tracker();
        eventually("delegated auth ready", GENEROUS, || {
            let current: Readiness = readiness.borrow().clone();
            let verified = !tracker.review_unverified(ReviewApi::TokenReview)
                && !tracker.review_unverified(ReviewApi::SubjectAccessReview);
            async move {
                if current.ready && verified {
                    Ok(Some(()))
                } else {
                    Err(anyhow!(
                        "not ready: {current:?}, probes verified: {verified}"
                    ))
                }
            }
        })
        .await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn front_proxy_cert(cp: &ControlPlane) -> Result<IssuedCert> {
    let paths = cp.pki_paths();
    Ok(IssuedCert {
        cert_pem: std::fs::read_to_string(&paths.front_proxy_client_cert)?,
        key_pem: std::fs::read_to_string(&paths.front_proxy_client_key)?,
    })
}

fn metric(name: &str) -> RequestAttributes<'_> {
    RequestAttributes::Resource {
        verb: "list".into(),
        group: "external.metrics.k8s.io".into(),
        version: "v1beta1".into(),
        resource: name.into(),
        namespace: "default".into(),
    }
}

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo {
        name: name.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..Default::default()
    }
}

fn expect_user(auth: Authentication) -> UserInfo {
    match auth {
        Authentication::User(user) => Arc::unwrap_or_clone(user),
        other => panic!("expected an authenticated user, got {other:?}"),
    }
}

async fn create_json<K>(api: &Api<K>, value: serde_json::Value) -> Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value)?;
    Ok(api.create(&PostParams::default(), &object).await?)
}

/// Binds `users` to a ClusterRole that may list every external metric.
async fn grant_metrics(client: &kube::Client, name: &str, users: &[&str]) -> Result<()> {
    let roles: Api<ClusterRole> = Api::all(client.clone());
    if roles.get_opt("auth-e2e:metrics-reader").await?.is_none() {
        create_json(
            &roles,
            serde_json::json!({
                "metadata": { "name": "auth-e2e:metrics-reader" },
                "rules": [{ "apiGroups": ["external.metrics.k8s.io"], "resources": ["*"], "verbs": ["get", "list", "watch"] }],
            }),
        )
        .await?;
    }
    let subjects: Vec<serde_json::Value> = users
        .iter()
        .map(|u| serde_json::json!({ "kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": u }))
        .collect();
    create_json(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        serde_json::json!({
            "metadata": { "name": name },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "auth-e2e:metrics-reader" },
            "subjects": subjects,
        }),
    )
    .await?;
    Ok(())
}

/// Read-modify-write of the trust ConfigMap, retried on conflicts with kube-apiserver's own
/// controller that maintains it.
async fn edit_trust_configmap(
    client: &kube::Client,
    edit: impl Fn(&mut std::collections::BTreeMap<String, String>),
) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), CONFIGMAP_NAMESPACE);
    eventually("edit the trust ConfigMap", GENEROUS, || {
        let api = api.clone();
        let edit = &edit;
        async move {
            let mut cm = api.get(CONFIGMAP_NAME).await?;
            edit(cm.data.get_or_insert_with(Default::default));
            api.replace(CONFIGMAP_NAME, &PostParams::default(), &cm)
                .await?;
            Ok(Some(()))
        }
    })
    .await
}

#[tokio::test]
async fn delegated_auth_against_a_real_api_server() {
    let cp = ControlPlane::start().await.unwrap();
    let admin = cp.client();
    // Long deny entries so "the deny is cached" does not depend on timing.
    let options = AuthOptions {
        deny_cache_ttl: Duration::from_secs(3600),
        probe_interval: Duration::from_secs(1),
        ..AuthOptions::default()
    };
    // The agent's own identity: auth-delegator and the reader Role, nothing more.
    let h = Harness::start(cp.agent_client().await.unwrap(), options).unwrap();
    h.wait_ready().await.unwrap();

    // --- The ConfigMap as kube-apiserver wrote it from its flags.
    let config = h.auth.config();
    assert_eq!(config.allowed_names, vec![FRONT_PROXY_CLIENT_CN]);
    assert_eq!(config.username_headers, vec!["x-remote-user"]);
    assert_eq!(config.group_headers, vec!["x-remote-group"]);
    assert_eq!(config.extra_prefixes, vec!["x-remote-extra-"]);
    assert!(config.uid_headers.is_empty());
    assert_eq!(
        config.requestheader_ca_pem.as_deref().map(str::trim),
        Some(cp.front_proxy_ca_pem().trim())
    );
    assert_eq!(
        config.client_ca_pem.as_deref().map(str::trim),
        Some(cp.ca_cert_pem().trim())
    );
    assert_eq!(
        h.ca.bundle_names(),
        vec![REQUESTHEADER_BUNDLE, CLIENT_CA_BUNDLE]
    );

    // --- Real handshakes: the aggregator's certificate, the admin's, none, a stranger's.
    let front_proxy = front_proxy_cert(&cp).unwrap();
    let peer = h.handshake(Some(&front_proxy)).await.unwrap();
    assert_eq!(
        peer,
        PeerIdentity::Certificate {
            bundle: REQUESTHEADER_BUNDLE.into(),
            common_name: FRONT_PROXY_CLIENT_CN.into(),
            organizations: vec![],
        }
    );
    let hpa = expect_user(
        h.authenticate(
            &peer,
            &[
                (
                    "X-Remote-User",
                    "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
                ),
                ("X-Remote-Group", "system:serviceaccounts"),
                ("X-Remote-Group", "system:serviceaccounts:kube-system"),
                ("X-Remote-Extra-Scopes%2fv1", "metrics"),
            ],
        )
        .await,
    );
    assert_eq!(
        hpa.groups,
        vec![
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
            "system:authenticated"
        ]
    );
    assert_eq!(
        hpa.extra.get("scopes/v1"),
        Some(&vec!["metrics".to_owned()])
    );

    let admin_cert = IssuedCert {
        cert_pem: std::fs::read_to_string(&cp.pki_paths().admin_cert).unwrap(),
        key_pem: std::fs::read_to_string(&cp.pki_paths().admin_key).unwrap(),
    };
    let admin_peer = h.handshake(Some(&admin_cert)).await.unwrap();
    let admin_user = expect_user(h.authenticate(&admin_peer, &[]).await);
    assert_eq!(admin_user.name, ADMIN_USER);
    assert_eq!(
        admin_user.groups,
        vec!["system:masters", "system:authenticated"]
    );

    let anonymous = h.handshake(None).await.unwrap();
    assert_eq!(anonymous, PeerIdentity::Anonymous);
    assert_eq!(
        h.authenticate(&anonymous, &[("X-Remote-User", "forged")])
            .await,
        Authentication::User(Arc::new(UserInfo::anonymous()))
    );

    let stranger_ca = CertAuthority::new("auth-e2e-stranger-ca").unwrap();
    let stranger = stranger_ca
        .issue_client(FRONT_PROXY_CLIENT_CN, &[])
        .unwrap();
    assert!(h.handshake(Some(&stranger)).await.is_err());

    // --- TokenReview of a real service-account token; a garbage one is refused, and cached.
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    create_json(
        &sas,
        serde_json::json!({ "metadata": { "name": "auth-e2e" } }),
    )
    .await
    .unwrap();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = sas
        .create_token_request("auth-e2e", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .expect("token request status")
        .token;
    let bearer = format!("Bearer {token}");
    let sa_user = expect_user(
        h.authenticate(&PeerIdentity::Anonymous, &[("Authorization", &bearer)])
            .await,
    );
    assert_eq!(sa_user.name, "system:serviceaccount:default:auth-e2e");
    for group in [
        "system:serviceaccounts",
        "system:serviceaccounts:default",
        "system:authenticated",
    ] {
        assert!(sa_user.groups.iter().any(|g| g == group), "{sa_user:?}");
    }
    assert_eq!(
        sa_user
            .groups
            .iter()
            .filter(|g| *g == "system:authenticated")
            .count(),
        1
    );
    let reviews = h.auth.stats().token_reviews;
    for _ in 0..2 {
        let garbage = h
            .authenticate(
                &PeerIdentity::Anonymous,
                &[("Authorization", "Bearer not-a-real-token")],
            )
            .await;
        assert!(
            matches!(&garbage, Authentication::Rejected(_)),
            "{garbage:?}"
        );
    }
    assert_eq!(h.auth.stats().token_reviews, reviews + 1, "cached refusal");

    // --- SubjectAccessReviews: bound user allowed, unbound denied (and the deny cached).
    grant_metrics(&admin, "auth-e2e:alice", &["alice"])
        .await
        .unwrap();
    let alice = user("alice", &["system:authenticated"]);
    let allowed = eventually("alice allowed", GENEROUS, || async {
        // A fresh authorizer each time: RBAC caches in the API server settle quickly, but
        // this instance must not remember an early deny.
        let fresh = DelegatingAuth::new(
            cp.agent_client().await?,
            ClientCaHandle::new(),
            AuthOptions::default(),
        );
        Ok(
            match fresh.authorize(&alice, &metric("queue_depth")).wait().await {
                Decision::Allow => Some(()),
                _ => None,
            },
        )
    })
    .await;
    allowed.unwrap();
    assert_eq!(
        h.auth
            .authorize(&alice, &metric("queue_depth"))
            .wait()
            .await,
        Decision::Allow
    );
    // The HPA controller's identity from the headers above is allowed by the harness's binding.
    assert_eq!(
        h.auth.authorize(&hpa, &metric("queue_depth")).wait().await,
        Decision::Allow
    );

    let bob = user("bob", &["system:authenticated"]);
    let before = h.auth.stats().subject_access_reviews;
    for _ in 0..3 {
        assert!(
            matches!(
                h.auth.authorize(&bob, &metric("queue_depth")).wait().await,
                Decision::Deny(_)
            ),
            "bob is not bound"
        );
    }
    assert_eq!(
        h.auth.stats().subject_access_reviews,
        before + 1,
        "one review, then the cached deny"
    );
    // Even once bob is bound, this instance answers from its (hour-long) deny entry, while
    // an instance without the entry asks and is allowed.
    grant_metrics(&admin, "auth-e2e:bob", &["bob"])
        .await
        .unwrap();
    let fresh = DelegatingAuth::new(
        cp.agent_client().await.unwrap(),
        ClientCaHandle::new(),
        AuthOptions {
            deny_cache_ttl: Duration::ZERO,
            ..AuthOptions::default()
        },
    );
    eventually("bob allowed once bound", GENEROUS, || async {
        Ok(
            (fresh.authorize(&bob, &metric("queue_depth")).wait().await == Decision::Allow)
                .then_some(()),
        )
    })
    .await
    .unwrap();
    assert!(matches!(
        h.auth.authorize(&bob, &metric("queue_depth")).wait().await,
        Decision::Deny(_)
    ));
    assert_eq!(h.auth.stats().subject_access_reviews, before + 1);

    // system:masters never costs a review.
    let masters = user("someone", &["system:masters"]);
    let before = h.auth.stats().subject_access_reviews;
    assert_eq!(
        h.auth.authorize(&masters, &metric("anything")).wait().await,
        Decision::Allow
    );
    assert_eq!(h.auth.stats().subject_access_reviews, before);

    // --- Front-proxy CA rotation through the ConfigMap, no restart.
    let rotated_ca = CertAuthority::new("auth-e2e-rotated-front-proxy-ca").unwrap();
    let rotated = rotated_ca.issue_client(FRONT_PROXY_CLIENT_CN, &[]).unwrap();
    assert!(
        h.handshake(Some(&rotated)).await.is_err(),
        "not trusted before the rotation"
    );
    let new_bundle = format!("{}{}", cp.front_proxy_ca_pem(), rotated_ca.cert_pem());
    edit_trust_configmap(&admin, |data| {
        data.insert(KEY_REQUESTHEADER_CA.to_owned(), new_bundle.clone());
    })
    .await
    .unwrap();
    let peer = eventually("the rotated CA is trusted", GENEROUS, || async {
        Ok(h.handshake(Some(&rotated)).await.ok())
    })
    .await
    .unwrap();
    assert_eq!(peer.bundle(), Some(REQUESTHEADER_BUNDLE));
    let via_rotated = expect_user(h.authenticate(&peer, &[("X-Remote-User", "carol")]).await);
    assert_eq!(via_rotated.name, "carol");
    // The old CA is still in the bundle: the aggregator keeps working during the rotation.
    assert!(h.handshake(Some(&front_proxy)).await.is_ok());
    // A certificate of the front-proxy CA with a CN outside the allowed names is refused.
    let intruder = rotated_ca.issue_client("intruder", &[]).unwrap();
    let intruder_peer = h.handshake(Some(&intruder)).await.unwrap();
    match h
        .authenticate(&intruder_peer, &[("X-Remote-User", "system:admin")])
        .await
    {
        Authentication::Rejected(reason) => assert!(
            reason.contains("x509: subject with cn=intruder is not in the allowed list"),
            "{reason}"
        ),
        other => panic!("intruder not rejected: {other:?}"),
    }

    // --- A malformed update is ignored; the next good one applies.
    let rejected_before = h.auth.stats().configmap_rejected;
    edit_trust_configmap(&admin, |data| {
        data.insert(
            KEY_ALLOWED_NAMES.to_owned(),
            "front-proxy-client".to_owned(),
        );
    })
    .await
    .unwrap();
    eventually("the malformed update is seen", GENEROUS, || async {
        Ok((h.auth.stats().configmap_rejected > rejected_before).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(h.auth.config().allowed_names, vec![FRONT_PROXY_CLIENT_CN]);
    assert!(h.auth.readiness().borrow().ready);
    assert!(h.handshake(Some(&rotated)).await.is_ok());
    edit_trust_configmap(&admin, |data| {
        data.insert(
            KEY_ALLOWED_NAMES.to_owned(),
            r#"["front-proxy-client","intruder"]"#.to_owned(),
        );
    })
    .await
    .unwrap();
    eventually("the corrected update applies", GENEROUS, || async {
        Ok(h.auth
            .config()
            .allowed_names
            .iter()
            .any(|n| n == "intruder")
            .then_some(()))
    })
    .await
    .unwrap();
    let now_allowed = expect_user(
        h.authenticate(&intruder_peer, &[("X-Remote-User", "dave")])
            .await,
    );
    assert_eq!(now_allowed.name, "dave");
}

/// A kubeconfig for a client certificate of the cluster CA.
fn kubeconfig(cp: &ControlPlane, user: &str, cert: &IssuedCert) -> Result<std::path::PathBuf> {
    let (cert_path, key_path) = cert.write(cp.dir(), user)?;
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let path = cp.dir().join(format!("{user}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: u\ncurrent-context: e2e\n",
            q(&cp.server_url()),
            q(&cp.ca_cert_path().to_string_lossy()),
            q(&cert_path.to_string_lossy()),
            q(&key_path.to_string_lossy()),
        ),
    )?;
    Ok(path)
}

#[tokio::test]
async fn missing_rbac_is_a_readiness_reason_until_fixed() {
    let cp = ControlPlane::start().await.unwrap();
    let admin = cp.client();
    let name = "auth-e2e-no-rbac";
    let cert = cp.issue_client_cert(name, &[]).unwrap();
    let client = client_from_kubeconfig(&kubeconfig(&cp, name, &cert).unwrap())
        .await
        .unwrap();
    let h = Harness::start(
        client,
        AuthOptions {
            probe_interval: Duration::from_secs(1),
            ..AuthOptions::default()
        },
    )
    .unwrap();

    let expected = format!("{CONFIGMAP_FORBIDDEN}; {TOKENREVIEW_FORBIDDEN}; {SAR_FORBIDDEN}");
    let readiness = h.auth.readiness();
    eventually("all three RBAC problems reported", GENEROUS, || {
        let current = readiness.borrow().clone();
        let expected = expected.clone();
        async move { Ok((!current.ready && current.reason == expected).then_some(())) }
    })
    .await
    .unwrap();
    assert_eq!(
        readiness.borrow().reason,
        "missing RoleBinding: the agent's service account needs the Role kube-system/extension-apiserver-authentication-reader; \
         missing ClusterRoleBinding to system:auth-delegator: cannot create tokenreviews.authentication.k8s.io; \
         missing ClusterRoleBinding to system:auth-delegator: cannot create subjectaccessreviews.authorization.k8s.io"
    );
    // Requests fail loudly meanwhile: no client certificate is trusted yet, and a review
    // cannot be had.
    assert!(h.ca.bundle_names().is_empty());
    match h
        .auth
        .authorize(&user("alice", &["system:authenticated"]), &metric("m"))
        .wait()
        .await
    {
        Decision::Error(message) => assert!(message.contains("forbidden"), "{message}"),
        other => panic!("expected an error decision, got {other:?}"),
    }
    match h
        .authenticate(
            &PeerIdentity::Anonymous,
            &[("Authorization", "Bearer whatever")],
        )
        .await
    {
        Authentication::Error(message) => assert!(message.contains("forbidden"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }

    // The fix an operator would apply; readiness follows without a restart.
    create_json(
        &Api::<RoleBinding>::namespaced(admin.clone(), "kube-system"),
        serde_json::json!({
            "metadata": { "name": "auth-e2e:auth-reader", "namespace": "kube-system" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "extension-apiserver-authentication-reader" },
            "subjects": [{ "kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name }],
        }),
    )
    .await
    .unwrap();
    eventually("ConfigMap readable", GENEROUS, || {
        let current = readiness.borrow().clone();
        async move {
            Ok((!current.reason.contains(CONFIGMAP_FORBIDDEN)
                && current.reason == format!("{TOKENREVIEW_FORBIDDEN}; {SAR_FORBIDDEN}"))
            .then_some(()))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        h.ca.bundle_names(),
        vec![REQUESTHEADER_BUNDLE, CLIENT_CA_BUNDLE]
    );
    create_json(
        &Api::<ClusterRoleBinding>::all(admin.clone()),
        serde_json::json!({
            "metadata": { "name": "auth-e2e:auth-delegator" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator" },
            "subjects": [{ "kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name }],
        }),
    )
    .await
    .unwrap();
    h.wait_ready().await.unwrap();
    assert_eq!(
        h.auth.readiness().borrow().clone(),
        Readiness {
            ready: true,
            reason: String::new()
        }
    );
}
