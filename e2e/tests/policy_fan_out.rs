//! An ApprovalPolicy change makes only the kinds whose rules it changes look
//! at their objects again: tightening a rule about GroupMappings costs the
//! Tenants nothing, tightening one about Tenants makes each Tenant look once.

mod common;

use common::{has_condition, metric, wait_tenant};
use countersign_crds::{ApprovalPolicy, Tenant};
use countersign_e2e::{ControlPlane, unique_name};
use kube::api::{Api, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

const TENANTS: usize = 3;

fn policy(rules: serde_json::Value) -> anyhow::Result<ApprovalPolicy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "ApprovalPolicy",
        "metadata": {"name": "scoped"},
        "spec": {"rules": rules},
    }))?)
}

/// Applies the policy's new rules and waits until they are in force.
async fn tighten(api: &Api<ApprovalPolicy>, rules: serde_json::Value) -> anyhow::Result<()> {
    let wanted = policy(rules)?;
    api.patch(
        "scoped",
        &kube::api::PatchParams::apply("e2e").force(),
        &kube::api::Patch::Apply(&wanted),
    )
    .await?;
    let started = Instant::now();
    loop {
        let p = api.get("scoped").await?;
        let in_force = p.status.as_ref().and_then(|s| s.in_force.as_ref());
        if in_force.is_some_and(|f| f.rules == wanted.spec.rules) {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "not in force: {:?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_policy_change_reaches_only_the_kinds_whose_rules_it_changes() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let admin = cp.client().await?;
    common::approvals::install(&admin, false).await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("fan-out");
    let op = common::operator(&admin, &pool, &run).await?;
    let policies: Api<ApprovalPolicy> = Api::all(admin.clone());
    policies
        .create(
            &PostParams::default(),
            &policy(json!([{"kinds": ["GroupMapping"], "operations": ["create"]}]))?,
        )
        .await?;
    tighten(
        &policies,
        json!([{"kinds": ["GroupMapping"], "operations": ["create"]}]),
    )
    .await?;

    let tenants: Api<Tenant> = Api::all(admin.clone());
    for i in 0..TENANTS {
        let slug = unique_name(&format!("scoped-{i}"));
        tenants
            .create(
                &PostParams::default(),
                &common::tenant(&slug, &run, json!({"slug": slug, "name": "Scoped"}))?,
            )
            .await?;
        wait_tenant(&tenants, &slug, "Ready", |t| has_condition(t, "Ready", "True", "Live")).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tenant_reconciles = async || metric(&op, "countersign_reconciles_total{kind=\"Tenant\"").await;
    let settled = tenant_reconciles().await?;

    // A tighter rule about GroupMappings: nothing new for Tenants.
    tighten(
        &policies,
        json!([{"kinds": ["GroupMapping"], "operations": ["create", "delete"]}]),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        tenant_reconciles().await?,
        settled,
        "Tenants looked at again for a GroupMapping rule"
    );

    // A rule about Tenants: each Tenant looks once.
    tighten(
        &policies,
        json!([{"kinds": ["GroupMapping"], "operations": ["create", "delete"]},
               {"kinds": ["Tenant"], "operations": ["update"]}]),
    )
    .await?;
    let started = Instant::now();
    loop {
        let looked = tenant_reconciles().await? - settled;
        if looked >= TENANTS as f64 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "only {looked} Tenant reconciles after a Tenant rule changed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(tenant_reconciles().await? - settled, TENANTS as f64, "once each");
    op.shutdown().await;
    Ok(())
}
