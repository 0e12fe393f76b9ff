//! The black-box external metrics conformance suite (`e2e::conformance`), by default against
//! our server running in-process against a real control plane, with every capability the
//! suite can use: value fixtures, RBAC on the delegating cluster, a recording of the
//! SubjectAccessReviews the server sends, certificates for the whole authentication matrix
//! and a second listener with empty `requestheader-allowed-names`. Against our server,
//! every check must be fully verified.
//!
//! Pointed at another server with `CONFORMANCE_URL` and friends (see
//! `e2e::conformance::env`), it runs what that server's description allows and lists what
//! it could not verify.
//!
//! The tests share one control plane and server: they run on one process-wide runtime
//! (clients and server tasks belong to the runtime that created them) and the first test
//! to arrive starts everything.

use std::sync::LazyLock;

use anyhow::Result;
use e2e::conformance::{self, Report, Target};
use e2e::controlplane::{CertAuthority, ControlPlane, FRONT_PROXY_CLIENT_CN};
use e2e::metrics_server::{MetricsServer, MetricsServerOptions, Replica};
use futures::future::BoxFuture;
use tokio::sync::OnceCell;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
});

/// Everything a run needs, kept alive for the whole test process. Statics are never
/// dropped: the control plane's processes die with the test process (its guardian).
struct Suite {
    target: Target,
    /// Whether the target is our in-process server (everything must be verified).
    ours: bool,
    _control_plane: Option<ControlPlane>,
    _server: Option<MetricsServer>,
    _replica: Option<Replica>,
}

/// The suite, or why it could not start: kept, so that the target starts once and every
/// test names the cause of a failed start.
static SUITE: OnceCell<Result<Suite, String>> = OnceCell::const_new();

async fn start_ours() -> Result<Suite> {
    let cp = ControlPlane::start().await?;
    let server = MetricsServer::start(
        &cp,
        MetricsServerOptions {
            record_reviews: true,
            ..MetricsServerOptions::default()
        },
    )
    .await?;
    conformance::prepare_cluster(&cp.client()).await?;

    // A second front-proxy CA in the request-header bundle (as during a rotation), whose
    // key the suite holds, to mint a certificate with a CN outside the allowed names.
    let extra_ca = CertAuthority::new("conformance-front-proxy-ca")?;
    server.add_front_proxy_ca(&cp, extra_ca.cert_pem()).await?;
    let disallowed = extra_ca.issue_client("conformance-intruder", &[])?;
    assert_ne!(FRONT_PROXY_CLIENT_CN, "conformance-intruder");
    let replica = server
        .start_static_trust_replica(|data| {
            data.insert("requestheader-allowed-names".to_owned(), "[]".to_owned());
        })
        .await?;

    let paths = cp.pki_paths();
    let target = Target {
        endpoint: server.endpoint(),
        front_proxy: e2e::controlplane::IssuedCert {
            cert_pem: std::fs::read_to_string(&paths.front_proxy_client_cert)?,
            key_pem: std::fs::read_to_string(&paths.front_proxy_client_key)?,
        },
        disallowed_front_proxy: Some(disallowed),
        client_ca_user: Some(
            cp.issue_client_cert("conformance:cert-user", &[conformance::READER_GROUP])?,
        ),
        empty_allowed_names: Some(replica.endpoint.clone()),
        cluster: Some(cp.client()),
        fixtures: Some(server.fixtures()),
        reviews: server.review_log(),
    };
    Ok(Suite {
        target,
        ours: true,
        _control_plane: Some(cp),
        _server: Some(server),
        _replica: Some(replica),
    })
}

async fn suite() -> &'static Suite {
    let suite = SUITE
        .get_or_init(|| async {
            start_suite()
                .await
                .map_err(|error| format!("starting the conformance target: {error:#}"))
        })
        .await;
    match suite {
        Ok(suite) => suite,
        Err(why) => panic!("{why}"),
    }
}

async fn start_suite() -> Result<Suite> {
    if let Some(target) = Target::from_env().await? {
        if let Some(admin) = &target.cluster {
            conformance::prepare_cluster(admin).await?;
        }
        eprintln!("conformance: against {}", target.endpoint.url);
        return Ok(Suite {
            target,
            ours: false,
            _control_plane: None,
            _server: None,
            _replica: None,
        });
    }
    start_ours().await
}

fn run(check: for<'a> fn(&'a Target) -> BoxFuture<'a, Result<Report>>) {
    RUNTIME.block_on(async {
        let suite = suite().await;
        let report = check(&suite.target)
            .await
            .unwrap_or_else(|error| panic!("{error:#}"));
        if suite.ours {
            assert!(
                report.not_verified.is_empty(),
                "against our server everything must be verified: {:?}",
                report.not_verified
            );
        } else if !report.not_verified.is_empty() {
            eprintln!(
                "conformance: not verified for this target: {:?}",
                report.not_verified
            );
        }
    });
}

#[test]
fn discovery_documents() {
    run(|t| Box::pin(conformance::discovery(t)));
}

#[test]
fn status_codes_and_bodies() {
    run(|t| Box::pin(conformance::status_codes(t)));
}

#[test]
fn label_selector_semantics() {
    run(|t| Box::pin(conformance::selectors(t)));
}

#[test]
fn quantity_vectors() {
    run(|t| Box::pin(conformance::quantities(t)));
}

#[test]
fn authentication_and_authorization_matrix() {
    run(|t| Box::pin(conformance::auth_matrix(t)));
}

#[test]
fn aggregator_availability_check() {
    run(|t| Box::pin(conformance::availability_check(t)));
}
