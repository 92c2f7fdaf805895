//! With leader election, only the lease holder reconciles, and a standby
//! takes over when the leader stops.

mod common;

use common::{has_condition, metric, wait_tenant};
use countersign_crds::Tenant;
use countersign_e2e::unique_name;
use countersign_operator::run::{LeaderElection, Running};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

async fn wait_metric(op: &Running, series: &str, want: f64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let value = metric(op, series).await?;
        if value == want {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{series} stayed at {value}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("leader");
    let lease = unique_name("lease");
    common::grant_operator_role(&client, &lease, "countersign-audit-anchor").await?;
    let elect = |identity: &str| {
        let lease = lease.clone();
        let identity = identity.to_string();
        move |o: &mut countersign_operator::RunOptions| {
            o.leader_election = Some(LeaderElection {
                namespace: common::OPERATOR_NAMESPACE.into(),
                lease_name: lease,
                identity,
                duration_seconds: 3,
            });
        }
    };
    let first = common::operator_with(&client, &pool, &run, elect("first")).await?;
    wait_metric(&first, "countersign_leader", 1.0, Duration::from_secs(30)).await?;
    let second = common::operator_with(&client, &pool, &run, elect("second")).await?;

    let api: Api<Tenant> = Api::all(client.clone());
    let slug = unique_name("led");
    api.create(
        &PostParams::default(),
        &common::tenant(&slug, &run, json!({"slug": slug, "name": "Led"}))?,
    )
    .await?;
    wait_tenant(&api, &slug, "Ready", |t| has_condition(t, "Ready", "True", "Live")).await?;
    assert_eq!(metric(&second, "countersign_leader").await?, 0.0);
    assert_eq!(
        metric(&second, "countersign_reconciles_total").await?,
        0.0,
        "the standby must not reconcile"
    );

    first.shutdown().await;
    wait_metric(&second, "countersign_leader", 1.0, Duration::from_secs(30)).await?;
    api.patch(
        &slug,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"name": "Led by the second"}})),
    )
    .await?;
    wait_tenant(&api, &slug, "Ready at generation 2", |t| {
        has_condition(t, "Ready", "True", "Live") && t.metadata.generation == Some(2)
    })
    .await?;
    let name: String = sqlx::query_scalar("SELECT name FROM tenants WHERE slug = $1")
        .bind(&slug)
        .fetch_one(&pool)
        .await?;
    assert_eq!(name, "Led by the second");
    second.shutdown().await;
    Ok(())
}

/// A leader whose lease is taken from it (here: another holder written over
/// it, as happens after a network partition outlasts the lease) does not stay
/// up idle: `serve_until`, which `countersign run` returns from, fails, so the
/// process exits non-zero and Kubernetes restarts it into a fresh campaign.
#[tokio::test]
async fn a_leader_that_loses_its_lease_exits() -> anyhow::Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    let client = common::cluster().await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("lost");
    let lease = unique_name("lease");
    common::grant_operator_role(&client, &lease, "countersign-audit-anchor").await?;
    let leader = common::operator_with(&client, &pool, &run, |o| {
        o.leader_election = Some(LeaderElection {
            namespace: common::OPERATOR_NAMESPACE.into(),
            lease_name: lease.clone(),
            identity: "leader".into(),
            duration_seconds: 3,
        });
    })
    .await?;
    wait_metric(&leader, "countersign_leader", 1.0, Duration::from_secs(30)).await?;
    let serving = tokio::spawn(leader.serve_until(std::future::pending()));

    let leases: Api<Lease> = Api::namespaced(client.clone(), common::OPERATOR_NAMESPACE);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    leases
        .patch(
            &lease,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "holderIdentity": "intruder",
                "leaseDurationSeconds": 3600,
                "acquireTime": now,
                "renewTime": now,
            }})),
        )
        .await?;
    let outcome = tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .map_err(|_| anyhow::anyhow!("the operator stayed up 30 s after losing its lease"))??;
    let err = outcome.expect_err("losing the lease must end the operator with an error");
    assert!(err.to_string().contains("leader lease"), "{err}");
    let holder = leases.get(&lease).await?.spec.and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("intruder"), "the intruder keeps the lease");
    Ok(())
}
