//! The outcomes every kind's pipeline reports, built the same way so a
//! condition means the same thing on every kind. `subject`
//! is how a message names the object, e.g. `tenant "acme"`.

use crate::approval::{self, ApprovedChange, Decision, Gate};
use crate::conditions::DesiredCondition;
use crate::outcome::{Desired, Outcome};
use countersign_crds::ConditionStatus;
use countersign_crds::approval_policy::Operation;
use countersign_crds::status::{APPROVED, READY, RECONCILING, STALLED, SYNCED};
use std::collections::BTreeMap;
use std::time::Duration;

/// How often an object waiting on something outside itself looks again.
pub const WAIT_REQUEUE: Duration = Duration::from_secs(10);
/// How often a conflicting object checks whether the other claim went away.
pub const CONFLICT_REQUEUE: Duration = Duration::from_secs(300);

/// A condition to set.
pub fn cond(
    type_: &'static str,
    status: ConditionStatus,
    reason: &'static str,
    message: impl Into<String>,
) -> DesiredCondition {
    DesiredCondition::new(type_, status, reason, message)
}

/// Synced=True when the database was only read.
pub fn database_read() -> DesiredCondition {
    cond(
        SYNCED,
        ConditionStatus::True,
        "ReconcileSucceeded",
        "the database was read without error",
    )
}

/// The spec is live: the row with `database_id` holds the configuration with `digest`.
pub fn live(subject: &str, database_id: String, digest: &str) -> Outcome {
    Outcome {
        conditions: vec![
            cond(
                READY,
                ConditionStatus::True,
                "Live",
                format!("{subject} is live in the API database"),
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
            digest: digest.to_string(),
        },
        requeue_after: None,
        pending_digest: Some(None),
        drop_conditions: Vec::new(),
        drift_corrected: Vec::new(),
    }
}

/// Waiting for something that should appear by itself (a parent, a tenant,
/// a provider): nothing was written, and the object looks again soon.
pub fn waiting(reason: &'static str, message: String) -> Outcome {
    Outcome {
        conditions: vec![
            cond(READY, ConditionStatus::False, reason, message.clone()),
            database_read(),
            cond(RECONCILING, ConditionStatus::True, reason, message),
            cond(STALLED, ConditionStatus::False, reason, ""),
        ],
        live: Desired::Unchanged,
        requeue_after: Some(WAIT_REQUEUE),
        // The gate was not reached: no digest of this spec awaits approval.
        pending_digest: Some(None),
        drop_conditions: Vec::new(),
        drift_corrected: Vec::new(),
    }
}

/// The spec was rejected before reaching the database: a spec change is needed.
pub fn stalled(reason: &'static str, message: String) -> Outcome {
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
pub fn refused(reason: &'static str, message: String) -> Outcome {
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
        // The gate was not reached: no digest of this spec awaits approval.
        pending_digest: Some(None),
        drop_conditions: Vec::new(),
        drift_corrected: Vec::new(),
    }
}

/// The tenant's live row does not list the object's namespace. Nothing is
/// written; a row this object wrote while the namespace was allowed is left
/// as it was and still reported (status keeps its id), so the object never
/// claims that something is gone which is not.
pub fn not_permitted(tenant_slug: &str, namespace: &str, existing_row: Option<uuid::Uuid>) -> Outcome {
    let message = format!(
        "spec.tenantRef: tenant {tenant_slug:?} does not list namespace {namespace:?} in spec.allowedNamespaces; \
         nothing was written"
    );
    match existing_row {
        None => refused("TenantNotPermitted", message),
        Some(id) => Outcome {
            live: Desired::Unchanged,
            ..refused(
                "TenantNotPermitted",
                format!(
                    "{message}; the row written while the namespace was allowed (id {id}) stays as it was until \
                     the tenant allows the namespace again or this object is deleted"
                ),
            )
        },
    }
}

/// The outcome when a pass failed with an error (the database was away or
/// refused the write, …): nothing was written, and Ready keeps describing
/// what was last known to be live. A transient error is being retried
/// (Reconciling); any other needs a person to change the spec, the
/// database's grants or its schema (Stalled), though the operator keeps
/// looking with back-off so a fix outside the spec is picked up by itself.
/// Serialization failures never get here: the operator retries them
/// without reporting them.
pub fn failed(error: &crate::Error) -> Outcome {
    let reason = error.reason();
    let message = error.public_message();
    let progress = if error.is_transient() {
        [
            cond(RECONCILING, ConditionStatus::True, reason, "retrying with back-off"),
            cond(STALLED, ConditionStatus::False, reason, ""),
        ]
    } else {
        [
            cond(RECONCILING, ConditionStatus::False, reason, ""),
            cond(STALLED, ConditionStatus::True, reason, message.clone()),
        ]
    };
    let mut conditions = vec![cond(SYNCED, ConditionStatus::False, reason, message)];
    conditions.extend(progress);
    Outcome {
        conditions,
        live: Desired::Unchanged,
        requeue_after: None,
        pending_digest: None,
        drop_conditions: Vec::new(),
        drift_corrected: Vec::new(),
    }
}

/// The outcome while a change waits behind the two-person rule. For an
/// update the approved configuration stays live and Ready keeps saying so;
/// for a create Ready says what is missing, `not_live` describing how the
/// object is held (not written, or stored pending and not exposed).
pub fn held(
    decision: &Decision,
    open_until: Option<chrono::DateTime<chrono::Utc>>,
    digest: &str,
    operation: Operation,
    not_live: &str,
) -> Outcome {
    let approved = approval::condition(decision, digest);
    let needs_change = matches!(
        decision,
        Decision::Rejected { .. }
            | Decision::Expired
            | Decision::RequesterUnknown
            | Decision::RequesterUnverified { .. }
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
            format!("{not_live} until a second person approves: {}", approved.message),
        ));
    }
    Outcome {
        conditions,
        live: Desired::Unchanged,
        requeue_after: approval::recheck_after(decision, open_until, chrono::Utc::now()),
        pending_digest: Some(Some(digest.to_string())),
        drop_conditions: Vec::new(),
        drift_corrected: Vec::new(),
    }
}

/// Adds the Approved condition for a carried-out approval, or drops it when
/// no policy covers the object any more.
pub fn with_approval(mut outcome: Outcome, approver: Option<String>, approval_applies: bool, digest: &str) -> Outcome {
    if let Some(approver) = approver {
        outcome
            .conditions
            .push(approval::condition(&Decision::Approved { approver }, digest));
    } else if !approval_applies {
        outcome.drop_conditions.push(APPROVED);
    }
    outcome
}

/// What a planned write does to the object's declared intent (its spec,
/// requester and adopt annotation): the one mapping from a write to the
/// operation the two-person rule judges, the same for every kind. Only
/// restoring what is approved (drift correction, a referenced Secret's
/// content rotating) needs nobody.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// A row this object makes.
    New,
    /// A row made outside Countersign that the adopt annotation takes over:
    /// judged as a create, since from now on the object decides the row.
    TakeOver,
    /// The declared intent changed, whether or not the row does (a
    /// deletion policy, a different Secret, a new requester).
    Changed,
    /// The row is brought back to, or kept at, what was approved.
    Restored,
}

impl Intent {
    /// The operation an ApprovalPolicy (or the floor) must cover for the
    /// write to need a second person; None when nobody needs to approve it.
    pub fn operation(self) -> Option<Operation> {
        match self {
            Self::New | Self::TakeOver => Some(Operation::Create),
            Self::Changed => Some(Operation::Update),
            Self::Restored => None,
        }
    }
}

/// What the two-person rule lets a planned write do.
#[derive(Clone, Debug)]
pub enum Passage {
    /// Write now, carrying this approval if one was needed.
    Go {
        /// The approval the write carries out.
        approved: Option<ApprovedChange>,
        /// Whether a policy covers the object (the Approved condition stays).
        approval_applies: bool,
    },
    /// Do not write; report this.
    Held(Outcome),
    /// A new object held for approval whose kind keeps it stored but not
    /// exposed ([`HeldCreate::StoredPending`]): store it so, and report this.
    HeldStored(Outcome),
}

/// How a kind keeps a new object while its creation waits for approval: a
/// property of the kind, so the rule itself is the same for every kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldCreate {
    /// Nothing is written until it is approved.
    NotWritten,
    /// Stored in a pending state the platform does not expose (an
    /// IdentityProvider's PENDING_APPROVAL row, reference 000).
    StoredPending,
}

/// A planned write of one object, as the two-person rule sees it.
#[derive(Clone, Debug)]
pub struct Planned<'a> {
    /// Kind.
    pub kind: &'static str,
    /// The object's metadata (uid, name, annotations).
    pub meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    /// create or update; None for writes nobody needs to approve (drift, digest).
    pub operation: Option<Operation>,
    /// Digest of the change.
    pub digest: &'a str,
    /// The spec as it would be applied.
    pub spec: serde_json::Value,
    /// How a held create is kept, e.g. `tenant "acme" is not created`.
    pub not_live: String,
    /// Whether the approval floor covers this change.
    pub floor: bool,
    /// How the kind keeps a held create (a take-over is never stored: the
    /// row stays as its maker left it).
    pub held_create: HeldCreate,
}

/// Passes a planned write through the two-person rule: the same steps for
/// every kind.
pub async fn pass(
    pool: &sqlx::PgPool,
    approvals: &approval::Inputs,
    planned: Planned<'_>,
    actor: &crate::audit::Actor,
) -> Result<Passage, crate::Error> {
    let Some(operation) = planned.operation else {
        return Ok(Passage::Go {
            approved: None,
            approval_applies: approvals.may_apply(),
        });
    };
    let meta = planned.meta;
    let name = meta.name.clone().unwrap_or_default();
    let change = approval::Change {
        kind: planned.kind,
        object_key: match &meta.namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name,
        },
        uid: meta.uid.as_deref().unwrap_or_default(),
        annotations: meta.annotations.as_ref(),
        operation,
        digest: planned.digest,
        snapshot: planned.spec,
        floor: if planned.floor {
            approval::Baseline::Floor
        } else {
            approval::Baseline::PoliciesOnly
        },
    };
    Ok(match approval::gate(pool, approvals, change, actor).await? {
        Gate::NotRequired => Passage::Go {
            approved: None,
            approval_applies: false,
        },
        Gate::Approved(change) => Passage::Go {
            approved: Some(change),
            approval_applies: true,
        },
        Gate::Hold(decision, open_until) => {
            let outcome = held(&decision, open_until, planned.digest, operation, &planned.not_live);
            // A change nobody verifiably asked for is not even stored.
            let asked = !matches!(
                decision,
                Decision::RequesterUnknown | Decision::RequesterUnverified { .. }
            );
            if operation == Operation::Create && planned.held_create == HeldCreate::StoredPending && asked {
                Passage::HeldStored(outcome)
            } else {
                Passage::Held(outcome)
            }
        }
    })
}

/// An annotation's value.
pub fn annotation<'a>(annotations: Option<&'a BTreeMap<String, String>>, key: &str) -> Option<&'a String> {
    annotations.and_then(|a| a.get(key))
}

/// Whether a deletion may proceed now.
#[derive(Clone, Debug)]
pub enum DeletionGate {
    /// Remove (or release) the row, carrying this approval if one was needed.
    Proceed(Option<ApprovedChange>),
    /// Keep the finalizer: the deletion waits behind the two-person rule.
    Hold(Outcome),
}

/// The object a deletion gate looks at.
#[derive(Clone, Debug)]
pub struct Deleting<'a> {
    /// Kind.
    pub kind: &'static str,
    /// namespace/name.
    pub object_key: String,
    /// uid.
    pub uid: &'a str,
    /// The object's annotations.
    pub annotations: Option<&'a BTreeMap<String, String>>,
    /// The spec being deleted, as JSON.
    pub spec: serde_json::Value,
    /// How messages name the object.
    pub subject: String,
}

/// Passes the deletion of an object that manages a row through the
/// two-person rule. The digest covers the uid, the requester and the spec
/// being deleted.
pub async fn deletion_gate(
    pool: &sqlx::PgPool,
    approvals: &approval::Inputs,
    object: Deleting<'_>,
    actor: &crate::audit::Actor,
) -> Result<DeletionGate, crate::Error> {
    if crate::db::owned_by_object(pool, object.kind, object.uid)
        .await?
        .is_none()
    {
        return Ok(DeletionGate::Proceed(None));
    }
    let requester = annotation(object.annotations, countersign_crds::annotations::REQUESTED_BY);
    let snapshot = serde_json::json!({ "delete": object.spec });
    let digest = crate::digest::change_digest(object.uid, requester.map(String::as_str), &snapshot)?;
    let change = approval::Change {
        kind: object.kind,
        object_key: object.object_key,
        uid: object.uid,
        annotations: object.annotations,
        operation: Operation::Delete,
        digest: &digest,
        snapshot,
        floor: approval::Baseline::PoliciesOnly,
    };
    Ok(match approval::gate(pool, approvals, change, actor).await? {
        Gate::NotRequired => DeletionGate::Proceed(None),
        Gate::Approved(change) => DeletionGate::Proceed(Some(change)),
        Gate::Hold(decision, open_until) => {
            let mut outcome = held(&decision, open_until, &digest, Operation::Delete, &object.subject);
            outcome.conditions.push(cond(
                READY,
                ConditionStatus::True,
                "DeletionAwaitingApproval",
                format!(
                    "{} stays live until a second person approves its deletion",
                    object.subject
                ),
            ));
            DeletionGate::Hold(outcome)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition<'a>(outcome: &'a Outcome, type_: &str) -> Option<&'a DesiredCondition> {
        outcome.conditions.iter().find(|c| c.type_ == type_)
    }

    #[test]
    fn a_transient_failure_is_retried_and_any_other_stalls() {
        let away = failed(&crate::Error::Database(sqlx::Error::PoolTimedOut));
        let synced = condition(&away, SYNCED).expect("Synced");
        assert_eq!(
            (synced.status, synced.reason),
            (ConditionStatus::False, "DatabaseUnavailable")
        );
        assert_eq!(
            condition(&away, RECONCILING).map(|c| c.status),
            Some(ConditionStatus::True)
        );
        assert_eq!(
            condition(&away, STALLED).map(|c| c.status),
            Some(ConditionStatus::False)
        );
        assert!(condition(&away, READY).is_none(), "Ready keeps describing what is live");
        assert_eq!((&away.live, away.pending_digest.clone()), (&Desired::Unchanged, None));

        let schema = failed(&crate::Error::SchemaMismatch("run `countersign migrate`".into()));
        let stalled = condition(&schema, STALLED).expect("Stalled");
        assert_eq!(
            (stalled.status, stalled.reason),
            (ConditionStatus::True, "SchemaMismatch")
        );
        assert!(stalled.message.contains("countersign migrate"), "{}", stalled.message);
        assert_eq!(
            condition(&schema, RECONCILING).map(|c| c.status),
            Some(ConditionStatus::False)
        );
        assert_eq!(
            condition(&schema, SYNCED).map(|c| (c.status, c.reason)),
            Some((ConditionStatus::False, "SchemaMismatch"))
        );
    }
}
