//! The API server pushes back (API priority and fairness answers 429) and the
//! operator backs off and retries: every object still converges, and no
//! object reports a failure for what was only back-pressure.

mod common;

use common::{has_condition, wait_tenant};
use countersign_crds::Tenant;
use countersign_e2e::{ControlPlane, unique_name};
use kube::api::{Api, PostParams};
use serde_json::json;
use std::time::Duration;

const TENANTS: usize = 40;

/// A priority level of one concurrency share that rejects what does not fit
/// at once, and a flow schema putting everything the operator does in it.
fn squeeze() -> String {
    format!(
        "apiVersion: flowcontrol.apiserver.k8s.io/v1\nkind: PriorityLevelConfiguration\n\
         metadata: {{name: countersign-squeezed}}\n\
         spec:\n  type: Limited\n  limited:\n    nominalConcurrencyShares: 1\n    lendablePercent: 0\n    \
         limitResponse: {{type: Reject}}\n\
         ---\n\
         apiVersion: flowcontrol.apiserver.k8s.io/v1\nkind: FlowSchema\nmetadata: {{name: countersign-squeezed}}\n\
         spec:\n  priorityLevelConfiguration: {{name: countersign-squeezed}}\n  matchingPrecedence: 100\n  \
         distinguisherMethod: {{type: ByUser}}\n  rules:\n  - subjects: [{{kind: User, user: {{name: '{}'}}}}]\n    \
         resourceRules: [{{verbs: ['*'], apiGroups: ['*'], resources: ['*'], clusterScope: true, namespaces: ['*']}}]\n    \
         nonResourceRules: [{{verbs: ['*'], nonResourceURLs: ['*']}}]\n",
        common::OPERATOR_IDENTITY
    )
}

/// The sum of the API server's `apiserver_flowcontrol_rejected_requests_total`
/// for the squeezed flow schema.
async fn rejected(admin: &kube::Client) -> anyhow::Result<f64> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = admin.request_text(request).await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_flowcontrol_rejected_requests_total")
                && l.contains("flow_schema=\"countersign-squeezed\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[tokio::test]
async fn objects_converge_through_the_api_servers_429s_without_reporting_a_failure() -> anyhow::Result<()> {
    // A control plane of its own: the squeeze would hold back every test's operator.
    let cp = ControlPlane::start().await?;
    let admin = cp.client().await?;
    common::install_crds(&admin).await?;
    common::apply_yaml(&admin, &squeeze()).await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("squeezed");
    let op = common::operator(&admin, &pool, &run).await?;
    let tenants: Api<Tenant> = Api::all(admin.clone());
    let names: Vec<String> = (0..TENANTS).map(|i| unique_name(&format!("sq-{i}"))).collect();
    futures::future::try_join_all(names.iter().map(|slug| {
        let tenants = tenants.clone();
        let run = run.clone();
        async move {
            tenants
                .create(
                    &PostParams::default(),
                    &common::tenant(slug, &run, json!({"slug": slug, "name": "Squeezed"}))?,
                )
                .await?;
            anyhow::Ok(())
        }
    }))
    .await?;
    for slug in &names {
        wait_tenant(&tenants, slug, "Ready", |t| has_condition(t, "Ready", "True", "Live")).await?;
    }
    let pushed_back = rejected(&admin).await?;
    assert!(
        pushed_back > 0.0,
        "the API server never answered 429: the test proves nothing"
    );
    // Back-pressure is not a failure: the client retried, nothing was reported.
    let failed = common::metric(&op, "countersign_reconcile_errors_total").await?;
    assert_eq!(failed, 0.0, "{pushed_back} rejections surfaced as reconcile errors");
    for slug in &names {
        let t = tenants.get(slug).await?;
        assert!(
            !has_condition(&t, "Synced", "False", "KubernetesApiError"),
            "{slug}: {:?}",
            t.status
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    op.shutdown().await;
    Ok(())
}
