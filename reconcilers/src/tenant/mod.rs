//! The Tenant pipeline: resolve → validate → plan → apply → status.

pub mod apply;
pub mod plan;
pub mod resolve;
pub mod validate;

use crate::approval::{self, ApprovedChange};
use crate::audit::Actor;
use crate::outcome::Outcome;
use crate::report::{self, CONFLICT_REQUEUE, refused, stalled};
use apply::Attribution;
use countersign_crds::{DeletionPolicy, Tenant, annotations};
use plan::Plan;
use sqlx::PgPool;

pub use crate::report::{DeletionGate, failed};

/// The kind name used in ownership records and the audit log.
pub const KIND: &str = "Tenant";

fn attribution(tenant: &Tenant, actor: &Actor, digest: String, approval: Option<ApprovedChange>) -> Attribution {
    Attribution::of(&tenant.metadata, actor, digest, approval)
}

fn adopt_requested(tenant: &Tenant) -> bool {
    annotation(tenant, annotations::ADOPT).is_some_and(|v| v == "true")
}

/// Brings the database in line with the Tenant. Transient failures are
/// returned as errors (the caller backs off); everything else is an outcome.
pub async fn reconcile(
    tenant: &Tenant,
    pool: &PgPool,
    actor: &Actor,
    approvals: &approval::Inputs,
) -> Result<Outcome, crate::Error> {
    let desired = match validate::validate(&tenant.spec) {
        Ok(d) => d,
        Err(invalid) => return Ok(stalled("InvalidSpec", invalid.to_string())),
    };
    let uid = tenant.metadata.uid.clone().unwrap_or_default();
    let digest = crate::digest::intent_digest(&tenant.metadata, &tenant.spec)?;
    let observed = resolve::observe(pool, &uid, &desired.slug, desired.parent_slug.as_deref()).await?;
    let slug = desired.slug.clone();
    let plan = plan::plan(desired, &observed, &uid, &digest, adopt_requested(tenant));
    let drift_corrected = match (&plan, &observed.row) {
        (
            Plan::Update {
                values,
                cause: plan::UpdateCause::DriftCorrected,
                ..
            },
            Some(row),
        ) => values.differences(row),
        _ => Vec::new(),
    };
    // Every change of the declared intent needs a second person, even one
    // that leaves the row as it is; correcting drift restores what was approved.
    let operation = match &plan {
        Plan::Create(_) => report::Intent::New.operation(),
        Plan::Update { cause, .. } => cause.intent().operation(),
        Plan::RecordDigest { .. } => report::Intent::Changed.operation(),
        _ => None,
    };
    let planned = report::Planned {
        kind: KIND,
        meta: &tenant.metadata,
        operation,
        digest: &digest,
        spec: serde_json::to_value(&tenant.spec)?,
        not_live: format!("tenant {slug:?} is not created"),
        floor: false,
        held_create: report::HeldCreate::NotWritten,
    };
    let (approved, approval_applies) = match report::pass(pool, approvals, planned, actor).await? {
        report::Passage::Held(outcome) | report::Passage::HeldStored(outcome) => return Ok(outcome),
        report::Passage::Go {
            approved,
            approval_applies,
        } => (approved, approval_applies),
    };
    let approver = approved.as_ref().map(|a| a.approver.clone());
    let who = attribution(tenant, actor, digest.clone(), approved);
    let written = apply::apply(pool, &plan, &who).await?;
    let outcome = match plan {
        Plan::WaitForParent(parent) => report::waiting(
            "WaitingForDependency",
            format!("parent tenant {parent:?} does not exist yet"),
        ),
        Plan::AlreadyExists { row_id } => Outcome {
            requeue_after: None,
            ..refused(
                "AlreadyExists",
                format!(
                    "spec.slug: tenant {slug:?} already exists in the API database (id {row_id}) and was not made by Countersign; \
                     set the annotation {}=\"true\" to adopt it",
                    annotations::ADOPT
                ),
            )
        },
        Plan::Conflict { owner } => Outcome {
            requeue_after: Some(CONFLICT_REQUEUE),
            ..refused(
                "Conflict",
                format!("spec.slug: tenant {slug:?} is already managed by Tenant {owner:?}; nothing was changed"),
            )
        },
        Plan::Create(_) | Plan::Update { .. } | Plan::RecordDigest { .. } | Plan::Noop { .. } => {
            let row_id = written.or(match plan {
                Plan::Noop { row_id } => Some(row_id),
                _ => None,
            });
            let database_id = row_id.map(|id| id.to_string()).unwrap_or_default();
            report::live(&format!("tenant {slug:?}"), database_id, &digest)
        }
    };
    Ok(Outcome {
        drift_corrected,
        ..report::with_approval(outcome, approver, approval_applies, &digest)
    })
}

/// Passes the deletion of a Tenant that manages a row through the two-person rule.
pub async fn deletion_gate(
    tenant: &Tenant,
    pool: &PgPool,
    actor: &Actor,
    approvals: &approval::Inputs,
) -> Result<DeletionGate, crate::Error> {
    let deleting = report::Deleting {
        kind: KIND,
        object_key: tenant.metadata.name.clone().unwrap_or_default(),
        uid: tenant.metadata.uid.as_deref().unwrap_or_default(),
        annotations: tenant.metadata.annotations.as_ref(),
        spec: serde_json::to_value(&tenant.spec)?,
        subject: format!("tenant {:?}", tenant.spec.slug),
    };
    report::deletion_gate(pool, approvals, deleting, actor).await
}

/// Handles deletion of the Tenant according to its deletion policy, carrying
/// out an approval in the same transaction when one was needed.
pub async fn cleanup(
    tenant: &Tenant,
    pool: &PgPool,
    actor: &Actor,
    approved: Option<ApprovedChange>,
) -> Result<(), crate::Error> {
    let who = attribution(tenant, actor, String::new(), approved);
    apply::remove(pool, tenant.spec.deletion_policy == DeletionPolicy::Orphan, &who).await?;
    Ok(())
}

fn annotation<'a>(tenant: &'a Tenant, key: &str) -> Option<&'a String> {
    report::annotation(tenant.metadata.annotations.as_ref(), key)
}
