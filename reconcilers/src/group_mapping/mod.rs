//! The GroupMapping pipeline: resolve → validate → plan → two-person gate →
//! apply → status.

pub mod apply;
pub mod plan;
pub mod resolve;
pub mod validate;

use crate::approval::{self, ApprovedChange};
use crate::audit::Actor;
use crate::outcome::Outcome;
use crate::report::{self, CONFLICT_REQUEUE, refused, stalled};
use apply::Attribution;
use countersign_crds::approval_policy::Operation;
use countersign_crds::{GroupMapping, annotations};
use plan::{Cause, Plan};
use sqlx::PgPool;

pub use crate::report::{DeletionGate, failed};

/// The kind name used in ownership records and the audit log.
pub const KIND: &str = "GroupMapping";

fn annotation<'a>(gm: &'a GroupMapping, key: &str) -> Option<&'a String> {
    report::annotation(gm.metadata.annotations.as_ref(), key)
}

fn object_key(gm: &GroupMapping) -> String {
    format!(
        "{}/{}",
        gm.metadata.namespace.as_deref().unwrap_or_default(),
        gm.metadata.name.as_deref().unwrap_or_default()
    )
}

fn subject(gm: &GroupMapping) -> String {
    format!(
        "group mapping {:?} → {:?}",
        gm.spec.group_name,
        validate::role_name(gm.spec.role)
    )
}

fn attribution(gm: &GroupMapping, actor: &Actor, digest: String, approval: Option<ApprovedChange>) -> Attribution {
    Attribution::of(&gm.metadata, actor, digest, approval)
}

/// Brings the database in line with the GroupMapping. `platform_tenant` is
/// the slug of the platform's own tenant, the only one whose providers may
/// grant platform-wide roles (operator configuration).
pub async fn reconcile(
    gm: &GroupMapping,
    pool: &PgPool,
    actor: &Actor,
    approvals: &approval::Inputs,
    platform_tenant: Option<&str>,
) -> Result<Outcome, crate::Error> {
    let desired = match validate::validate(&gm.spec) {
        Ok(d) => d,
        Err(invalid) => return Ok(stalled("InvalidSpec", invalid.to_string())),
    };
    let uid = gm.metadata.uid.clone().unwrap_or_default();
    let namespace = gm.metadata.namespace.clone().unwrap_or_default();
    let digest = crate::digest::intent_digest(&gm.metadata, &gm.spec)?;
    let provider = desired.provider_name.clone();
    let group = desired.group_name.clone();
    let observed = resolve::observe(pool, &uid, &namespace, &provider, &group).await?;
    let adopt = annotation(gm, annotations::ADOPT).is_some_and(|v| v == "true");
    let role = desired.role;
    let subject_of_plan = plan::Subject {
        namespace: &namespace,
        digest: &digest,
        adopt,
        platform_tenant,
    };
    let existing_row = observed.ours.as_ref().map(|(row, _)| row.id);
    let (row_id, values, cause) = match plan::plan(desired, &observed, &subject_of_plan) {
        Plan::WaitForProvider => {
            return Ok(report::waiting(
                "WaitingForDependency",
                format!("spec.identityProviderRef: identity provider {provider:?} is not in the API database yet"),
            ));
        }
        Plan::NotPermitted { tenant_slug } => {
            return Ok(report::not_permitted(&tenant_slug, &namespace, existing_row));
        }
        Plan::PlatformRoleNotPermitted { tenant_slug } => {
            let message = format!(
                "spec.role: {role} is a platform-wide role and can only be granted through an identity provider of \
                 the platform's own tenant (the operator's --platform-tenant), not of tenant {tenant_slug:?}; \
                 nothing was written"
            );
            return Ok(match existing_row {
                None => refused("PlatformRoleNotPermitted", message),
                Some(id) => Outcome {
                    live: crate::outcome::Desired::Unchanged,
                    ..refused(
                        "PlatformRoleNotPermitted",
                        format!("{message}; the row written before (id {id}) stays as it was"),
                    )
                },
            });
        }
        Plan::AlreadyExists { row_id } => {
            return Ok(refused(
                "AlreadyExists",
                format!(
                    "spec.groupName: group {group:?} of provider {provider:?} is already mapped (id {row_id}) outside \
                     Countersign; set the annotation {}=\"true\" to adopt it",
                    annotations::ADOPT
                ),
            ));
        }
        Plan::Conflict { owner } => {
            return Ok(Outcome {
                requeue_after: Some(CONFLICT_REQUEUE),
                ..refused(
                    "Conflict",
                    format!(
                        "spec.groupName: group {group:?} of provider {provider:?} is already mapped by GroupMapping \
                         {owner:?}; a group maps to one role per provider"
                    ),
                )
            });
        }
        Plan::Noop { row_id } => {
            let live = report::live(&subject(gm), row_id.to_string(), &digest);
            return Ok(report::with_approval(live, None, approvals.may_apply(), &digest));
        }
        Plan::Write { row_id, values, cause } => (row_id, values, cause),
    };
    let drift_corrected = match (cause, &observed.ours) {
        (Cause::DriftCorrected, Some((row, _))) => values.differences(row),
        _ => Vec::new(),
    };
    let operation = match cause {
        Cause::Create => Some(Operation::Create),
        Cause::SpecChanged | Cause::Adopted => Some(Operation::Update),
        Cause::DriftCorrected | Cause::RecordDigest => None,
    };
    let planned = report::Planned {
        kind: KIND,
        meta: &gm.metadata,
        operation,
        digest: &digest,
        spec: serde_json::to_value(&gm.spec)?,
        not_live: format!("{} is not created", subject(gm)),
        floor: validate::is_platform_wide(role),
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
    let who = attribution(gm, actor, digest.clone(), approved);
    let id = apply::write(pool, row_id, &values, cause, &who).await?;
    let live = report::live(&subject(gm), id.to_string(), &digest);
    Ok(Outcome {
        drift_corrected,
        ..report::with_approval(live, approver, approval_applies, &digest)
    })
}

/// Passes the deletion of a GroupMapping through the two-person rule.
pub async fn deletion_gate(
    gm: &GroupMapping,
    pool: &PgPool,
    actor: &Actor,
    approvals: &approval::Inputs,
) -> Result<DeletionGate, crate::Error> {
    let deleting = report::Deleting {
        kind: KIND,
        object_key: object_key(gm),
        uid: gm.metadata.uid.as_deref().unwrap_or_default(),
        annotations: gm.metadata.annotations.as_ref(),
        spec: serde_json::to_value(&gm.spec)?,
        subject: subject(gm),
    };
    report::deletion_gate(pool, approvals, deleting, actor).await
}

/// Soft-deletes the row, carrying out an approval when one was needed.
pub async fn cleanup(
    gm: &GroupMapping,
    pool: &PgPool,
    actor: &Actor,
    approved: Option<ApprovedChange>,
) -> Result<(), crate::Error> {
    apply::remove(pool, &attribution(gm, actor, String::new(), approved)).await
}
