//! Leader election against a real kube-apiserver (1.20.2): two replicas of ours share a
//! lock, only one leads, a killed leader is replaced once its lease runs out, a leader that
//! shuts down hands over at once, a Go DCA replica holding the lock keeps ours following,
//! and the same holds with a Lease instead of the ConfigMap.
//!
//! Electors run in-process with a 6 s lease (renew deadline 3 s, retry 1.5 s), as the agent
//! identity the harness sets up RBAC for. Assertions are about eventual state, sampled
//! often, with generous deadlines; only "never two leaders" is checked at every sample.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use datadog_cluster_agent::config::{LeaderElectionSettings, LockResource};
use datadog_cluster_agent::leader::record::{LEADER_ANNOTATION, LeaderElectionRecord};
use datadog_cluster_agent::leader::{self, ElectionTask, LeaderError, LeaderHandle};
use e2e::controlplane::ControlPlane;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(6);
const GENEROUS: Duration = Duration::from_secs(120);
const SAMPLE: Duration = Duration::from_millis(100);

struct Replica {
    identity: String,
    handle: LeaderHandle,
    task: ElectionTask,
    shutdown: CancellationToken,
}

fn settings(resource: LockResource, name: &str) -> LeaderElectionSettings {
    LeaderElectionSettings {
        enabled: true,
        lease_duration: LEASE,
        lease_name: name.to_owned(),
        resource,
        release_on_shutdown: true,
    }
}

fn start(client: &Client, settings: &LeaderElectionSettings, ns: &str, identity: &str) -> Replica {
    let shutdown = CancellationToken::new();
    let (handle, task) = leader::spawn_with(
        client.clone(),
        settings,
        ns,
        identity.to_owned(),
        shutdown.clone(),
    )
    .unwrap();
    Replica {
        identity: identity.to_owned(),
        handle,
        task,
        shutdown,
    }
}

fn leading<'a>(replicas: &[&'a Replica]) -> Vec<&'a str> {
    replicas
        .iter()
        .filter(|r| r.handle.is_leader())
        .map(|r| r.identity.as_str())
        .collect()
}

/// Polls until `cond`, asserting at every sample that at most one replica leads.
async fn until(what: &str, replicas: &[&Replica], mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + GENEROUS;
    loop {
        let now_leading = leading(replicas);
        assert!(
            now_leading.len() <= 1,
            "{what}: several leaders {now_leading:?}"
        );
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {GENEROUS:?}");
        tokio::time::sleep(SAMPLE).await;
    }
}

/// Samples for `span`: always exactly `expected` leads.
async fn steadily_led_by(replicas: &[&Replica], expected: &str, span: Duration) {
    let end = Instant::now() + span;
    while Instant::now() < end {
        assert_eq!(leading(replicas), vec![expected], "leadership moved");
        tokio::time::sleep(SAMPLE).await;
    }
}

/// The election must end cleanly on shutdown.
async fn stop(replica: Replica) {
    replica.shutdown.cancel();
    replica.task.await.unwrap();
    assert!(!replica.handle.is_leader());
}

/// The ConfigMap lock's record, checked to be exactly client-go's JSON.
async fn config_map_record(cms: &Api<ConfigMap>, name: &str) -> LeaderElectionRecord {
    let cm = cms.get(name).await.unwrap();
    let raw = cm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEADER_ANNOTATION))
        .unwrap_or_else(|| panic!("no {LEADER_ANNOTATION} annotation on {name}"))
        .clone();
    let value: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let keys: BTreeSet<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    if !keys.contains("strategy") {
        // Written by us: client-go's five fields, times as metav1.Time (seconds, UTC).
        assert_eq!(
            keys,
            BTreeSet::from([
                "holderIdentity",
                "leaseDurationSeconds",
                "acquireTime",
                "renewTime",
                "leaderTransitions"
            ]),
            "{raw}"
        );
        for key in ["acquireTime", "renewTime"] {
            let t = value[key].as_str().unwrap();
            assert!(t.len() == 20 && t.ends_with('Z'), "{key} = {t}");
        }
    }
    LeaderElectionRecord::decode(&raw).unwrap()
}

async fn lease_record(leases: &Api<Lease>, name: &str) -> (LeaderElectionRecord, Lease) {
    let lease = leases.get(name).await.unwrap();
    let spec = lease.spec.clone().unwrap_or_default();
    let record = LeaderElectionRecord {
        holder_identity: spec.holder_identity.unwrap_or_default(),
        lease_duration_seconds: spec.lease_duration_seconds.map_or(0, i64::from),
        acquire_time: spec.acquire_time.map(|t| t.0),
        renew_time: spec.renew_time.map(|t| t.0),
        leader_transitions: spec.lease_transitions.map_or(0, i64::from),
    };
    (record, lease)
}

async fn current_record(
    client: &Client,
    resource: LockResource,
    ns: &str,
    name: &str,
) -> LeaderElectionRecord {
    match resource {
        LockResource::ConfigMap => {
            config_map_record(&Api::namespaced(client.clone(), ns), name).await
        }
        LockResource::Lease => {
            lease_record(&Api::namespaced(client.clone(), ns), name)
                .await
                .0
        }
    }
}

/// Two replicas, a kill -9 of the leader, a newcomer, and a graceful handover.
async fn election_scenario(cp: &ControlPlane, resource: LockResource, name: &str) {
    let ns = cp.agent_namespace();
    let agent = cp.agent_client().await.unwrap();
    let admin = cp.client();
    let s = settings(resource, name);
    let what = |step: &str| format!("{resource:?} {name}: {step}");

    // Two replicas: exactly one leads, and the lock names it.
    let a = start(&agent, &s, ns, "dca-e2e-a");
    let b = start(&agent, &s, ns, "dca-e2e-b");
    until(&what("a leader is elected"), &[&a, &b], || {
        leading(&[&a, &b]).len() == 1
    })
    .await;
    let first = leading(&[&a, &b])[0].to_owned();
    steadily_led_by(&[&a, &b], &first, LEASE * 2).await;
    let record = current_record(&admin, resource, ns, name).await;
    assert_eq!(record.holder_identity, first);
    assert_eq!(record.lease_duration_seconds, 6);
    assert!(record.acquire_time.is_some() && record.renew_time >= record.acquire_time);
    let transitions = record.leader_transitions;
    // Both see the same leader in their status.
    until(&what("statuses agree"), &[&a, &b], || {
        a.handle.status().leader == first && b.handle.status().leader == first
    })
    .await;
    if resource == LockResource::Lease {
        // Like the Go DCA, the Lease mode also keeps a ConfigMap of that name.
        let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
        assert!(cms.get_opt(name).await.unwrap().is_some());
    }

    // kill -9 of the leader: no release; the other takes over once the lease runs out.
    let (leader, follower) = if first == a.identity { (a, b) } else { (b, a) };
    leader.task.abort();
    let died = leader.task.await;
    assert!(matches!(died, Err(LeaderError::TaskDied(_))), "{died:?}");
    assert!(!leader.handle.is_leader());
    until(&what("the survivor takes over"), &[&follower], || {
        follower.handle.is_leader()
    })
    .await;
    let record = current_record(&admin, resource, ns, name).await;
    assert_eq!(record.holder_identity, follower.identity);
    assert_eq!(record.leader_transitions, transitions + 1);

    // A newcomer follows; then the leader shuts down gracefully and hands over.
    let c = start(&agent, &s, ns, "dca-e2e-c");
    until(
        &what("the newcomer sees the leader"),
        &[&follower, &c],
        || c.handle.status().leader == follower.identity,
    )
    .await;
    steadily_led_by(&[&follower, &c], &follower.identity, LEASE).await;
    let leaving = follower.identity.clone();
    stop(follower).await;
    // Right after shutdown the lock is either released as client-go releases it, or
    // already taken by the newcomer.
    let record = current_record(&admin, resource, ns, name).await;
    if record.holder_identity.is_empty() {
        assert_eq!(record.lease_duration_seconds, 1);
        assert_eq!(record.leader_transitions, transitions + 1);
        assert_eq!(record.acquire_time, record.renew_time);
    } else {
        assert_eq!(
            record.holder_identity, c.identity,
            "{leaving} handed over to a stranger"
        );
        assert_eq!(record.leader_transitions, transitions + 2);
    }
    until(&what("the newcomer takes over"), &[&c], || {
        c.handle.is_leader()
    })
    .await;
    let record = current_record(&admin, resource, ns, name).await;
    assert_eq!(record.holder_identity, c.identity);
    assert_eq!(record.leader_transitions, transitions + 2);
    let status = c.handle.status();
    assert_eq!(status.state.as_str(), "Running");
    assert_eq!(status.leader, c.identity);
    assert_eq!(status.acquisitions_total, 1);
    stop(c).await;
}

/// What a Go DCA replica's client-go ConfigMapLock does each retry period: replace the object
/// it read with its record (its clock here is decades behind, and newer client-go adds
/// `strategy` and `preferredHolder`).
async fn go_renew(cms: &Api<ConfigMap>, name: &str, tick: u32) -> Result<(), kube::Error> {
    let raw = format!(
        r#"{{"holderIdentity":"go-dca-replica","leaseDurationSeconds":6,"acquireTime":"2001-01-01T00:00:00Z","renewTime":"2001-01-01T00:{:02}:{:02}Z","leaderTransitions":7,"strategy":"","preferredHolder":""}}"#,
        (tick / 60) % 60,
        tick % 60
    );
    let mut cm = cms.get(name).await?;
    cm.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(LEADER_ANNOTATION.to_owned(), raw);
    cms.replace(name, &PostParams::default(), &cm)
        .await
        .map(|_| ())
}

/// A Go DCA replica renewing the ConfigMap lock (with a clock decades off) keeps both of
/// ours following; when it stops renewing, one of ours takes over.
async fn foreign_holder_scenario(cp: &ControlPlane, name: &str) {
    let ns = cp.agent_namespace();
    let agent = cp.agent_client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(cp.client(), ns);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();

    go_renew(&cms, name, 0).await.unwrap();
    let stop_go = CancellationToken::new();
    let go_replica = tokio::spawn({
        let (stop_go, cms, name) = (stop_go.clone(), cms.clone(), name.to_owned());
        async move {
            let mut tick = 1;
            while !stop_go.is_cancelled() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                // A lost race is retried next period, as client-go does.
                let _ = go_renew(&cms, &name, tick).await;
                tick += 1;
            }
        }
    });

    let s = settings(LockResource::ConfigMap, name);
    let d = start(&agent, &s, ns, "dca-e2e-d");
    let e = start(&agent, &s, ns, "dca-e2e-e");
    until("ours see the Go leader", &[&d, &e], || {
        d.handle.status().leader == "go-dca-replica" && e.handle.status().leader == "go-dca-replica"
    })
    .await;
    // Several leases of sampling: nobody of ours leads.
    let end = Instant::now() + LEASE * 3;
    while Instant::now() < end {
        assert_eq!(
            leading(&[&d, &e]),
            Vec::<&str>::new(),
            "took a live Go lock"
        );
        tokio::time::sleep(SAMPLE).await;
    }
    assert_eq!(
        config_map_record(&cms, name).await.holder_identity,
        "go-dca-replica"
    );

    // The Go replica dies without releasing.
    stop_go.cancel();
    go_replica.await.unwrap();
    until("one of ours takes over", &[&d, &e], || {
        leading(&[&d, &e]).len() == 1
    })
    .await;
    let record = config_map_record(&cms, name).await;
    assert_eq!(record.holder_identity, leading(&[&d, &e])[0]);
    assert_eq!(record.leader_transitions, 8);
    stop(d).await;
    stop(e).await;
}

#[tokio::test]
async fn leader_election_on_a_real_apiserver() {
    let cp = ControlPlane::start().await.unwrap();
    election_scenario(&cp, LockResource::ConfigMap, "datadog-leader-election").await;
    election_scenario(&cp, LockResource::Lease, "datadog-leader-election-lease").await;
    foreign_holder_scenario(&cp, "datadog-leader-election-go").await;
}
