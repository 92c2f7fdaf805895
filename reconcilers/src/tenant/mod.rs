//! The Tenant pipeline: resolve → validate → plan → apply → status.

pub mod apply;
pub mod plan;
pub mod resolve;
pub mod validate;

use crate::approval::{self, ApprovedChange, Decision, Gate};
use crate::conditions::DesiredCondition;
use crate::outcome::{Desired, Outcome};
use apply::Attribution;
use countersign_crds::approval_policy::Operation;
use countersign_crds::status::{APPROVED, READY, RECONCILING, STALLED, SYNCED};
use countersign_crds::{ConditionStatus, DeletionPolicy, Tenant, annotations};
use plan::Plan;
use sqlx::PgPool;
use std::time::Duration;

/// The kind name used in ownership records and the audit log.
pub const KIND: &str = "Tenant";

/// How often a tenant waiting on something outside itself looks again.
const WAIT_REQUEUE: Duration = Duration::from_secs(10);
/// How often a conflicting tenant checks whether the other claim went away.
const CONFLICT_REQUEUE: Duration = Duration::from_secs(300);

fn attribution(tenant: &Tenant, actor: &str, digest: String, approval: Option<ApprovedChange>) -> Attribution {
    let meta = &tenant.metadata;
    Attribution {
        actor: actor.to_string(),
        requester: annotation(tenant, annotations::REQUESTED_BY).cloned(),
        uid: meta.uid.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        digest,
        approval,
    }
}

fn adopt_requested(tenant: &Tenant) -> bool {
    annotation(tenant, annotations::ADOPT).is_some_and(|v| v == "true")
}

/// Brings the database in line with the Tenant. Transient failures are
/// returned as errors (the caller backs off); everything else is an outcome.
pub async fn reconcile(
    tenant: &Tenant,
    pool: &PgPool,
    actor: &str,
    approvals: &approval::Inputs,
) -> Result<Outcome, crate::Error> {
    let desired = match validate::validate(&tenant.spec) {
        Ok(d) => d,
        Err(invalid) => return Ok(stalled("InvalidSpec", invalid.to_string())),
    };
    let requester = annotation(tenant, annotations::REQUESTED_BY);
    let uid = tenant.metadata.uid.clone().unwrap_or_default();
    let digest = crate::digest::change_digest(&uid, requester.map(String::as_str), &tenant.spec)?;
    let observed = resolve::observe(pool, &uid, &desired.slug, desired.parent_slug.as_deref()).await?;
    let slug = desired.slug.clone();
    let plan = plan::plan(desired, &observed, &uid, &digest, adopt_requested(tenant));
    // Only a change to what the row holds needs a second person: correcting
    // drift restores what was approved, and recording a digest changes nothing.
    let operation = match &plan {
        Plan::Create(_) => Some(Operation::Create),
        Plan::Update { cause, .. } if *cause != plan::UpdateCause::DriftCorrected => Some(Operation::Update),
        _ => None,
    };
    let mut approved = None;
    let mut approval_applies = approvals.policy.is_some();
    if let Some(operation) = operation {
        let change = approval::Change {
            kind: KIND,
            object_key: tenant.metadata.name.clone().unwrap_or_default(),
            uid: &uid,
            annotations: tenant.metadata.annotations.as_ref(),
            operation,
            digest: &digest,
            snapshot: serde_json::to_value(&tenant.spec)?,
        };
        match approval::gate(pool, approvals, change, actor).await? {
            Gate::NotRequired => approval_applies = false,
            Gate::Approved(change) => approved = Some(change),
            Gate::Hold(decision, open_until) => {
                return Ok(held(&decision, open_until, &digest, operation, &slug));
            }
        }
    }
    let approver = approved.as_ref().map(|a| a.approver.clone());
    let who = attribution(tenant, actor, digest.clone(), approved);
    let written = apply::apply(pool, &plan, &who).await?;
    let mut outcome = match plan {
        Plan::WaitForParent(parent) => Outcome {
            conditions: vec![
                cond(
                    READY,
                    ConditionStatus::False,
                    "WaitingForDependency",
                    format!("parent tenant {parent:?} does not exist yet"),
                ),
                database_read(),
                cond(
                    RECONCILING,
                    ConditionStatus::True,
                    "WaitingForDependency",
                    format!("waiting for parent tenant {parent:?}"),
                ),
                cond(STALLED, ConditionStatus::False, "WaitingForDependency", ""),
            ],
            live: Desired::Unchanged,
            requeue_after: Some(WAIT_REQUEUE),
            pending_digest: None,
            drop_conditions: Vec::new(),
        },
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
            Outcome {
                conditions: vec![
                    cond(
                        READY,
                        ConditionStatus::True,
                        "Live",
                        format!("tenant {slug:?} is live in the API database"),
                    ),
                    cond(
                        SYNCED,
                        ConditionStatus::True,
                        "ReconcileSucceeded",
                        "the database matches the spec",
                    ),
                    cond(RECONCILING, ConditionStatus::False, "Live", ""),
                    cond(STALLED, ConditionStatus::False, "Live", ""),
                ],
                live: Desired::Live {
                    database_id,
                    digest: digest.clone(),
                },
                requeue_after: None,
                pending_digest: Some(None),
                drop_conditions: Vec::new(),
            }
        }
    };
    if let Some(approver) = approver {
        outcome
            .conditions
            .push(approval::condition(&Decision::Approved { approver }, &digest));
    } else if !approval_applies {
        outcome.drop_conditions.push(APPROVED);
    }
    Ok(outcome)
}

/// Whether a deletion may proceed now.
#[derive(Clone, Debug)]
pub enum DeletionGate {
    /// Remove (or release) the row, carrying this approval if one was needed.
    Proceed(Option<ApprovedChange>),
    /// Keep the finalizer: the deletion waits behind the two-person rule.
    Hold(Outcome),
}

/// Passes the deletion of a Tenant that manages a row through the two-person
/// rule. The digest covers the uid, the requester and the spec being deleted.
pub async fn deletion_gate(
    tenant: &Tenant,
    pool: &PgPool,
    actor: &str,
    approvals: &approval::Inputs,
) -> Result<DeletionGate, crate::Error> {
    let uid = tenant.metadata.uid.clone().unwrap_or_default();
    if crate::db::owned_by_object(pool, KIND, &uid).await?.is_none() {
        return Ok(DeletionGate::Proceed(None));
    }
    let requester = annotation(tenant, annotations::REQUESTED_BY);
    let snapshot = serde_json::json!({"delete": &tenant.spec});
    let digest = crate::digest::change_digest(&uid, requester.map(String::as_str), &snapshot)?;
    let change = approval::Change {
        kind: KIND,
        object_key: tenant.metadata.name.clone().unwrap_or_default(),
        uid: &uid,
        annotations: tenant.metadata.annotations.as_ref(),
        operation: Operation::Delete,
        digest: &digest,
        snapshot,
    };
    Ok(match approval::gate(pool, approvals, change, actor).await? {
        Gate::NotRequired => DeletionGate::Proceed(None),
        Gate::Approved(change) => DeletionGate::Proceed(Some(change)),
        Gate::Hold(decision, open_until) => {
            let mut outcome = held(&decision, open_until, &digest, Operation::Delete, &tenant.spec.slug);
            outcome.conditions.push(cond(
                READY,
                ConditionStatus::True,
                "DeletionAwaitingApproval",
                format!(
                    "tenant {:?} stays live until a second person approves its deletion",
                    tenant.spec.slug
                ),
            ));
            DeletionGate::Hold(outcome)
        }
    })
}

/// Handles deletion of the Tenant according to its deletion policy, carrying
/// out an approval in the same transaction when one was needed.
pub async fn cleanup(
    tenant: &Tenant,
    pool: &PgPool,
    actor: &str,
    approved: Option<ApprovedChange>,
) -> Result<(), crate::Error> {
    let who = attribution(tenant, actor, String::new(), approved);
    apply::remove(pool, tenant.spec.deletion_policy == DeletionPolicy::Orphan, &who).await?;
    Ok(())
}

/// The outcome when the database cannot be reached: Ready keeps describing
/// what was last known to be live.
pub fn unavailable(error: &crate::Error) -> Outcome {
    Outcome {
        conditions: vec![
            cond(SYNCED, ConditionStatus::False, error.reason(), error.public_message()),
            cond(
                RECONCILING,
                ConditionStatus::True,
                error.reason(),
                "retrying with back-off",
            ),
        ],
        live: Desired::Unchanged,
        requeue_after: None,
        pending_digest: None,
        drop_conditions: Vec::new(),
    }
}

/// The spec was rejected before reaching the database: a spec change is needed.
fn stalled(reason: &'static str, message: String) -> Outcome {
    not_live(
        reason,
        message,
        cond(
            SYNCED,
            ConditionStatus::False,
            reason,
            "the spec was rejected before reaching the database",
        ),
        Desired::Unchanged,
    )
}

/// The database holds a row this object may not take: nothing was written.
fn refused(reason: &'static str, message: String) -> Outcome {
    not_live(reason, message, database_read(), Desired::NotLive)
}

fn not_live(reason: &'static str, message: String, synced: DesiredCondition, live: Desired) -> Outcome {
    Outcome {
        conditions: vec![
            cond(READY, ConditionStatus::False, reason, message.clone()),
            synced,
            cond(RECONCILING, ConditionStatus::False, reason, ""),
            cond(STALLED, ConditionStatus::True, reason, message),
        ],
        live,
        requeue_after: None,
        pending_digest: None,
        drop_conditions: Vec::new(),
    }
}

/// The outcome while a change waits behind the two-person rule: nothing was
/// written; for an update the approved configuration stays live and Ready
/// keeps saying so.
fn held(
    decision: &Decision,
    open_until: Option<chrono::DateTime<chrono::Utc>>,
    digest: &str,
    operation: Operation,
    slug: &str,
) -> Outcome {
    let approved = approval::condition(decision, digest);
    let needs_change = matches!(
        decision,
        Decision::Rejected { .. } | Decision::Expired | Decision::RequesterUnknown
    );
    let mut conditions = vec![
        approved.clone(),
        database_read(),
        cond(
            RECONCILING,
            (!needs_change).into(),
            decision.reason(),
            approved.message.clone(),
        ),
        cond(
            STALLED,
            needs_change.into(),
            decision.reason(),
            if needs_change {
                approved.message.clone()
            } else {
                String::new()
            },
        ),
    ];
    if operation == Operation::Create {
        conditions.push(cond(
            READY,
            ConditionStatus::False,
            decision.reason(),
            format!(
                "tenant {slug:?} is not created until a second person approves: {}",
                approved.message
            ),
        ));
    }
    Outcome {
        conditions,
        live: Desired::Unchanged,
        requeue_after: approval::recheck_after(decision, open_until, chrono::Utc::now()),
        pending_digest: Some(Some(digest.to_string())),
        drop_conditions: Vec::new(),
    }
}

/// Synced=True when the database was only read.
fn database_read() -> DesiredCondition {
    cond(
        SYNCED,
        ConditionStatus::True,
        "ReconcileSucceeded",
        "the database was read without error",
    )
}

fn annotation<'a>(tenant: &'a Tenant, key: &str) -> Option<&'a String> {
    tenant.metadata.annotations.as_ref().and_then(|a| a.get(key))
}

fn cond(
    type_: &'static str,
    status: ConditionStatus,
    reason: &'static str,
    message: impl Into<String>,
) -> DesiredCondition {
    DesiredCondition::new(type_, status, reason, message)
}
