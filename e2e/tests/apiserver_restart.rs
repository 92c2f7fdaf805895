//! The operator's watches recover when the API server restarts underneath it.

mod common;

use common::{has_condition, wait_tenant};
use countersign_crds::Tenant;
use countersign_e2e::{ControlPlane, unique_name};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

/// How long the operator may take to converge after the restart.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn the_operator_converges_after_an_apiserver_restart() -> anyhow::Result<()> {
    // A private control plane: restarting the shared one would disturb other tests.
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    common::install_crds(&client).await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("apirestart");
    let op = common::operator(&client, &pool, &run).await?;

    let api: Api<Tenant> = Api::all(client.clone());
    let slug = unique_name("restart");
    api.create(
        &PostParams::default(),
        &common::tenant(&slug, &run, json!({"slug": slug, "name": "Before"}))?,
    )
    .await?;
    wait_tenant(&api, &slug, "Ready", |t| has_condition(t, "Ready", "True", "Live")).await?;

    let restart = Instant::now();
    cp.restart_apiserver().await?;
    eprintln!("kube-apiserver restarted in {:?}", restart.elapsed());

    // A new client for the test; the operator keeps the one it started with.
    let api: Api<Tenant> = Api::all(cp.client().await?);
    api.patch(
        &slug,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"name": "After"}})),
    )
    .await?;

    let patched = Instant::now();
    let deadline = patched + CONVERGE_TIMEOUT;
    loop {
        let tenant = api.get_opt(&slug).await?;
        let ready = tenant
            .as_ref()
            .is_some_and(|t| t.metadata.generation == Some(2) && has_condition(t, "Ready", "True", "Live"));
        let name: Option<String> = sqlx::query_scalar("SELECT name FROM tenants WHERE slug = $1")
            .bind(&slug)
            .fetch_optional(&pool)
            .await?;
        if ready && name.as_deref() == Some("After") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the operator did not converge within {CONVERGE_TIMEOUT:?} of the API server restart \
             (Ready at generation 2: {ready}, database name: {name:?}); last Tenant status: {}\n\
             last lines of {}:\n{}",
            serde_json::to_string_pretty(&tenant.and_then(|t| t.status)).unwrap_or_default(),
            cp.apiserver_log_path().display(),
            cp.apiserver_log_tail(20),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("operator converged {:?} after the patch", patched.elapsed());

    op.shutdown().await;
    Ok(())
}
