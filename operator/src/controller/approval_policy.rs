//! The ApprovalPolicy controller: reports that a policy is in force, so
//! `kubectl wait --for=condition=Ready` works for it like for every kind.

use super::{Context, status};
use crate::Error;
use countersign_crds::ConditionStatus;
use countersign_crds::approval_policy::ApprovalPolicy;
use countersign_crds::status::{READY, RECONCILING, STALLED};
use countersign_reconcilers::approval::{kind_name, op_name};
use countersign_reconcilers::conditions::DesiredCondition;
use countersign_reconcilers::outcome::{Desired, Outcome};
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use std::sync::Arc;
use std::time::Duration;

/// Runs the ApprovalPolicy controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<ApprovalPolicy> = Api::all(ctx.client.clone());
    Controller::new(api, watcher::Config::default().any_semantic())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, |_, _, _| Action::requeue(Duration::from_secs(30)), ctx)
        .for_each(|_| async {})
        .await;
}

/// What the policy covers, in words.
pub fn summary(policy: &ApprovalPolicy) -> String {
    let rules: Vec<String> = policy
        .spec
        .rules
        .iter()
        .map(|r| {
            let kinds: Vec<&str> = r.kinds.iter().map(|k| kind_name(*k)).collect();
            let ops: Vec<&str> = r.operations.iter().map(|o| op_name(*o)).collect();
            format!("{} {}", ops.join("/"), kinds.join(", "))
        })
        .collect();
    format!(
        "a second person must approve: {}; requests stay open {} s; {} GitOps account(s) may declare requesters",
        rules.join("; "),
        policy.spec.request_ttl_seconds,
        policy.spec.gitops_service_accounts.len()
    )
}

async fn reconcile(policy: Arc<ApprovalPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<ApprovalPolicy> = Api::all(ctx.client.clone());
    let outcome = Outcome {
        conditions: vec![
            DesiredCondition::new(READY, ConditionStatus::True, "InForce", summary(&policy)),
            DesiredCondition::new(RECONCILING, ConditionStatus::False, "InForce", ""),
            DesiredCondition::new(STALLED, ConditionStatus::False, "InForce", ""),
        ],
        live: Desired::Unchanged,
        requeue_after: None,
        pending_digest: None,
        drop_conditions: Vec::new(),
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let previous = policy.status.as_ref();
    let new = outcome.status(previous, policy.metadata.generation, &now);
    status::write(&api, &*policy, previous, &new, &ctx).await?;
    Ok(Action::await_change())
}
