//! The FrontingLink pipeline: resolve → validate → plan → two-person gate →
//! apply → status.
//!
//! Platform resources belong to the platform: the link only points at them.
//! The database has no watch, so a resource that disappears is noticed on
//! the next resync and reported (`ResourceMissing`), never silently.

pub mod apply;
pub mod plan;
pub mod resolve;
pub mod validate;

use crate::approval::{self, ApprovedChange};
use crate::audit::Actor;
use crate::outcome::{Desired, Outcome};
use crate::report::{self, CONFLICT_REQUEUE, refused, stalled};
use apply::Attribution;
use countersign_crds::approval_policy::Operation;
use countersign_crds::{FrontingLink, annotations};
use plan::{Cause, Plan};
use sqlx::PgPool;

pub use crate::report::{DeletionGate, failed};

/// The kind name used in ownership records and the audit log.
pub const KIND: &str = "FrontingLink";

fn annotation<'a>(link: &'a FrontingLink, key: &str) -> Option<&'a String> {
    report::annotation(link.metadata.annotations.as_ref(), key)
}

fn name(link: &FrontingLink) -> String {
    link.metadata.name.clone().unwrap_or_default()
}

fn subject(link: &FrontingLink) -> String {
    format!(
        "fronting link {:?} → {:?}",
        link.spec.source_slug, link.spec.target_slug
    )
}

fn attribution(link: &FrontingLink, actor: &Actor, digest: String, approval: Option<ApprovedChange>) -> Attribution {
    Attribution::of(&link.metadata, actor, digest, approval)
}

/// Brings the database in line with the FrontingLink.
pub async fn reconcile(
    link: &FrontingLink,
    pool: &PgPool,
    actor: &Actor,
    approvals: &approval::Inputs,
) -> Result<Outcome, crate::Error> {
    let desired = match validate::validate(&link.spec) {
        Ok(d) => d,
        Err(invalid) => return Ok(stalled("InvalidSpec", invalid.to_string())),
    };
    let uid = link.metadata.uid.clone().unwrap_or_default();
    let digest = crate::digest::intent_digest(&link.metadata, &link.spec)?;
    let observed = resolve::observe(pool, &uid, &desired.source_slug, &desired.target_slug).await?;
    let adopt = annotation(link, annotations::ADOPT).is_some_and(|v| v == "true");
    let (row_id, values, cause) = match plan::plan(&desired, &observed, &digest, adopt) {
        Plan::MissingResources { missing, was_live } if was_live => {
            let message = format!(
                "resource(s) {missing:?} no longer exist in the API database; {} is not live",
                subject(link)
            );
            return Ok(Outcome {
                live: Desired::NotLive,
                ..report::waiting("ResourceMissing", message)
            });
        }
        Plan::MissingResources { missing, .. } => {
            return Ok(report::waiting(
                "WaitingForDependency",
                format!("platform resource(s) {missing:?} do not exist in the API database yet"),
            ));
        }
        Plan::UnknownScopes(problems) => {
            // The resources' scopes can change in the platform, so this is
            // looked at again on resync, not only on a spec change.
            return Ok(refused("UnknownScope", problems.join("; ")));
        }
        Plan::AlreadyExists { row_id } => {
            return Ok(refused(
                "AlreadyExists",
                format!(
                    "{} already exists in the API database (id {row_id}) and was not made by Countersign; \
                     set the annotation {}=\"true\" to adopt it",
                    subject(link),
                    annotations::ADOPT
                ),
            ));
        }
        Plan::Conflict { owner } => {
            return Ok(Outcome {
                requeue_after: Some(CONFLICT_REQUEUE),
                ..refused(
                    "Conflict",
                    format!("{} is already managed by FrontingLink {owner:?}", subject(link)),
                )
            });
        }
        Plan::Noop { row_id } => {
            let live = report::live(&subject(link), row_id.to_string(), &digest);
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
        meta: &link.metadata,
        operation,
        digest: &digest,
        spec: serde_json::to_value(&link.spec)?,
        not_live: format!("{} is not created", subject(link)),
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
    let who = attribution(link, actor, digest.clone(), approved);
    let id = apply::write(pool, row_id, &values, cause, &who).await?;
    let live = report::live(&subject(link), id.to_string(), &digest);
    Ok(Outcome {
        drift_corrected,
        ..report::with_approval(live, approver, approval_applies, &digest)
    })
}

/// Passes the deletion of a FrontingLink through the two-person rule.
pub async fn deletion_gate(
    link: &FrontingLink,
    pool: &PgPool,
    actor: &Actor,
    approvals: &approval::Inputs,
) -> Result<DeletionGate, crate::Error> {
    let deleting = report::Deleting {
        kind: KIND,
        object_key: name(link),
        uid: link.metadata.uid.as_deref().unwrap_or_default(),
        annotations: link.metadata.annotations.as_ref(),
        spec: serde_json::to_value(&link.spec)?,
        subject: subject(link),
    };
    report::deletion_gate(pool, approvals, deleting, actor).await
}

/// Soft-deletes the row, carrying out an approval when one was needed.
pub async fn cleanup(
    link: &FrontingLink,
    pool: &PgPool,
    actor: &Actor,
    approved: Option<ApprovedChange>,
) -> Result<(), crate::Error> {
    apply::remove(pool, &attribution(link, actor, String::new(), approved)).await
}
