//! The LicenseGrant pipeline: validate → configuration → signature →
//! commercial chain → resolve → plan → two-person gate → apply → status
//! (reference 000 "License grant import and quota rules").
//!
//! # What the vendor signs
//!
//! `spec.signature.value` is the base64 (standard alphabet, padded) Ed25519
//! signature, by the key the operator's keyring holds under
//! `spec.signature.keyId`, of the UTF-8 bytes of this JSON document:
//!
//! - every spec field except `signature`, under the spec's own camelCase
//!   names and with the values exactly as written in the manifest
//!   (`tenantRef` is the object `{"name": …}`, `quantity` a JSON integer,
//!   `validFrom`/`validUntil` the strings as written, not re-formatted);
//! - `addendumOf` and `revokes` always present, `null` when absent;
//! - plus `"format": "countersign.dev/license-grant/v1"`, so a signature
//!   made for any other document never verifies as a grant;
//! - serialised canonically ([`crate::digest::canonical_json`]): object keys
//!   sorted by their bytes, no whitespace, non-ASCII characters as raw
//!   UTF-8, only `"`, `\` and control characters escaped.
//!
//! Python's `json.dumps(doc, sort_keys=True, separators=(",", ":"),
//! ensure_ascii=False).encode()` produces the same bytes. The unit test
//! `signature::tests::the_canonical_encoding_is_pinned` holds an example.
//!
//! # What an import means
//!
//! A grant's fields are a signed document: once imported they are never
//! rewritten from a changed spec (`GrantImmutable`); an edit of the row
//! behind the operator's back is put back to the signed values. An ADDENDUM
//! adds its quantity to a GRANT of the same tenant and license type; a
//! REVOCATION sets `revoked_at` on the grant it names in the same
//! transaction. The view `license_quotas` sums what counts now. Deleting a
//! LicenseGrant releases the row and leaves it: only a signed revocation
//! takes a grant away.

pub mod apply;
pub mod plan;
pub mod resolve;
pub mod signature;
pub mod validate;
pub mod validity;

use crate::approval::{self, ApprovedChange};
use crate::audit::Actor;
use crate::conditions::DesiredCondition;
use crate::outcome::{Desired, Outcome};
use crate::report::{self, CONFLICT_REQUEUE, cond, refused, stalled};
use apply::Attribution;
use chrono::{DateTime, Utc};
use countersign_crds::approval_policy::Operation;
use countersign_crds::status::{READY, RECONCILING, STALLED, SYNCED};
use countersign_crds::{ConditionStatus, LicenseGrant, annotations};
use plan::{Cause, Plan};
use resolve::{Observed, TenantLive};
use sqlx::PgPool;
use std::collections::BTreeMap;
use uuid::Uuid;
use validate::DesiredGrant;
use validity::Validity;

pub use crate::report::{DeletionGate, failed};

/// The kind name used in ownership records and the audit log.
pub const KIND: &str = "LicenseGrant";

/// What grants are checked against: the operator's trusted keyring and the
/// two ends every commercial chain must have.
#[derive(Clone, Copy, Debug)]
pub struct Trust<'a> {
    /// Trusted Ed25519 public keys (32 raw bytes) by key ID.
    pub keyring: &'a BTreeMap<String, Vec<u8>>,
    /// The vendor every chain starts with.
    pub vendor: Option<&'a str>,
    /// The platform operator every chain ends with.
    pub operator: Option<&'a str>,
}

fn annotation<'a>(lg: &'a LicenseGrant, key: &str) -> Option<&'a String> {
    report::annotation(lg.metadata.annotations.as_ref(), key)
}

fn name(lg: &LicenseGrant) -> String {
    lg.metadata.name.clone().unwrap_or_default()
}

fn subject(lg: &LicenseGrant) -> String {
    format!("license grant {}", lg.spec.grant_id)
}

fn attribution(lg: &LicenseGrant, actor: &Actor, digest: String, approval: Option<ApprovedChange>) -> Attribution {
    Attribution::of(&lg.metadata, actor, digest, approval)
}

/// A refusal: nothing written. When this object already imported a row,
/// status keeps naming it (the row stays what it was).
fn refuse(reason: &'static str, message: String, imported: bool) -> Outcome {
    let outcome = refused(reason, message);
    if imported {
        Outcome {
            live: Desired::Unchanged,
            ..outcome
        }
    } else {
        outcome
    }
}

/// Brings the database in line with the LicenseGrant as of `now`.
/// Transient failures are errors (the caller backs off); everything else
/// is an outcome.
pub async fn reconcile(
    lg: &LicenseGrant,
    pool: &PgPool,
    actor: &Actor,
    approvals: &approval::Inputs,
    trust: Trust<'_>,
    now: DateTime<Utc>,
) -> Result<Outcome, crate::Error> {
    let desired = match validate::validate(&lg.spec) {
        Ok(d) => d,
        Err(invalid) => return Ok(stalled("InvalidSpec", invalid.to_string())),
    };
    let (vendor, operator) = match validate::configured(trust.keyring.is_empty(), trust.vendor, trust.operator) {
        Ok(ends) => ends,
        Err(message) => return Ok(stalled("LicensingNotConfigured", message)),
    };
    // The signature first: nothing else in an unsigned document means anything.
    if let Err(e) = signature::verify(&lg.spec, trust.keyring) {
        return Ok(stalled("InvalidSignature", e.to_string()));
    }
    if let Err(invalid) = validate::check_chain(&desired.commercial_chain, vendor, operator) {
        return Ok(stalled(
            "InvalidCommercialChain",
            format!("{invalid}; nothing was imported"),
        ));
    }
    let uid = lg.metadata.uid.clone().unwrap_or_default();
    let digest = crate::digest::intent_digest(&lg.metadata, &lg.spec)?;
    let reference = desired.reference().map(|(_, id)| id);
    let observed = resolve::observe(pool, &uid, &desired.tenant_name, desired.grant_id, reference).await?;
    let imported = observed.ours.is_some();
    let adopt = annotation(lg, annotations::ADOPT).is_some_and(|v| v == "true");
    let grant_id = desired.grant_id;
    let tenant_name = desired.tenant_name.clone();
    let (row_id, values, cause, revoked_at) = match plan::plan(desired.clone(), &observed, &digest, adopt) {
        Plan::WaitForTenant => {
            return Ok(report::waiting(
                "WaitingForDependency",
                format!("spec.tenantRef: tenant {tenant_name:?} is not in the API database yet"),
            ));
        }
        Plan::FingerprintMismatch { tenant } => {
            let slug = observed.tenant.as_ref().map(|t| t.slug.clone()).unwrap_or_default();
            let has = tenant.map_or_else(|| "no instance fingerprint".to_string(), |f| format!("{f:?}"));
            return Ok(refuse(
                "FingerprintMismatch",
                format!(
                    "spec.instanceFingerprint: the grant is bound to instance {:?} but tenant {slug:?} has {has}; \
                     the grant was not imported for it",
                    desired.instance_fingerprint
                ),
                imported,
            ));
        }
        Plan::WaitForReference { field, grant_id } => {
            return Ok(report::waiting(
                "WaitingForDependency",
                format!("{field}: grant {grant_id} is not imported yet"),
            ));
        }
        Plan::InvalidReference { field, rule } => {
            return Ok(refuse(
                "InvalidReference",
                format!("{field}: {rule}; nothing was imported"),
                imported,
            ));
        }
        Plan::Conflict { owner } => {
            return Ok(Outcome {
                requeue_after: Some(CONFLICT_REQUEUE),
                ..refused(
                    "Conflict",
                    format!(
                        "spec.grantId: grant {grant_id} is already imported by LicenseGrant {owner:?}; \
                         grant IDs are globally unique"
                    ),
                )
            });
        }
        Plan::AlreadyExists { row_id } => {
            return Ok(refused(
                "AlreadyExists",
                format!(
                    "spec.grantId: grant {grant_id} is already in the API database (id {row_id}) and was not \
                     imported by Countersign; set the annotation {}=\"true\" to adopt it",
                    annotations::ADOPT
                ),
            ));
        }
        Plan::Immutable { row_id } => {
            return Ok(refuse(
                "GrantImmutable",
                format!(
                    "spec: grant {grant_id} is imported (id {row_id}) and a signed grant is never changed in place; \
                     restore the imported spec, or import an ADDENDUM or a REVOCATION under a new grant ID"
                ),
                true,
            ));
        }
        Plan::Noop { row_id, revoked_at } => {
            let status = imported_status(&desired, &observed, row_id, &digest, revoked_at, pool, now).await?;
            return Ok(report::with_approval(status, None, approvals.may_apply(), &digest));
        }
        Plan::Write {
            row_id,
            values,
            cause,
            revoked_at,
        } => (row_id, values, cause, revoked_at),
    };
    // Only importing or adopting a grant needs a second person: restoring an
    // edited row puts back what was approved, and recording a digest
    // changes nothing.
    let drift_corrected = match (cause, &observed.ours) {
        (Cause::DriftCorrected, Some((row, _))) => values.differences(row),
        _ => Vec::new(),
    };
    let operation = match cause {
        Cause::Create => Some(Operation::Create),
        Cause::Adopted => Some(Operation::Update),
        Cause::DriftCorrected | Cause::RecordDigest => None,
    };
    let planned = report::Planned {
        kind: KIND,
        meta: &lg.metadata,
        operation,
        digest: &digest,
        spec: serde_json::to_value(&lg.spec)?,
        not_live: format!("{} is not imported", subject(lg)),
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
    let who = attribution(lg, actor, digest.clone(), approved);
    let id = apply::write(pool, row_id, &values, cause, &who).await?;
    let status = imported_status(&values.grant, &observed, id, &digest, revoked_at, pool, now).await?;
    Ok(Outcome {
        drift_corrected,
        ..report::with_approval(status, approver, approval_applies, &digest)
    })
}

/// The status of an imported grant: Ready while it counts towards the
/// tenant's quota (named in the message), otherwise why not, and a timed
/// look at the next moment that changes by itself.
async fn imported_status(
    grant: &DesiredGrant,
    observed: &Observed,
    row_id: Uuid,
    digest: &str,
    revoked_at: Option<DateTime<Utc>>,
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<Outcome, crate::Error> {
    let Some(tenant) = &observed.tenant else {
        // The planner only writes for a live tenant; never reached.
        return Ok(report::waiting(
            "WaitingForDependency",
            "spec.tenantRef: tenant is not live".into(),
        ));
    };
    // A revocation reports the quota its revoked grant counted towards.
    let license_type = match (&observed.referenced, grant.revokes) {
        (Some(target), Some(_)) => target.license_type.clone(),
        _ => grant.license_type.clone(),
    };
    let quota = resolve::quota(pool, tenant.id, &license_type).await?;
    let standing = validity::validity(grant, revoked_at, now);
    Ok(Outcome {
        requeue_after: validity::next_change(standing, grant, now),
        ..imported_outcome(grant, tenant, standing, &license_type, quota, row_id, digest)
    })
}

/// The pure half of [`imported_status`].
fn imported_outcome(
    grant: &DesiredGrant,
    tenant: &TenantLive,
    validity: Validity,
    license_type: &str,
    quota: i64,
    row_id: Uuid,
    digest: &str,
) -> Outcome {
    let id = grant.grant_id;
    let slug = &tenant.slug;
    let holds = format!("tenant {slug:?} now holds {quota} {license_type:?}");
    let (ready, reason, message) = match validity {
        Validity::Current => (
            true,
            "Live",
            format!(
                "license grant {id} ({}: {} × {:?} until {}) is live in the API database; {holds}",
                grant.grant_type,
                grant.quantity,
                grant.license_type,
                grant.valid_until.to_rfc3339()
            ),
        ),
        Validity::Recorded => (
            true,
            "Live",
            format!(
                "revocation {id} of grant {} is live in the API database; {holds}",
                grant.revokes.map(|g| g.to_string()).unwrap_or_default()
            ),
        ),
        Validity::NotYetValid => (
            false,
            "NotYetValid",
            format!(
                "license grant {id} is imported and counts from {}; {holds}",
                grant.valid_from.to_rfc3339()
            ),
        ),
        Validity::Expired => (
            false,
            "Expired",
            format!(
                "license grant {id} expired at {} and no longer counts; {holds}",
                grant.valid_until.to_rfc3339()
            ),
        ),
        Validity::Revoked(at) => (
            false,
            "Revoked",
            format!(
                "license grant {id} was revoked at {} and no longer counts; {holds}",
                at.to_rfc3339()
            ),
        ),
    };
    // Expired and revoked grants need a new grant (a spec change elsewhere)
    // to count again: kstatus Stalled. A grant not valid yet gets there by
    // itself: Reconciling.
    let waiting = validity == Validity::NotYetValid;
    let stuck = matches!(validity, Validity::Expired | Validity::Revoked(_));
    let conditions: Vec<DesiredCondition> = vec![
        cond(READY, ready.into(), reason, message.clone()),
        cond(
            SYNCED,
            ConditionStatus::True,
            "ReconcileSucceeded",
            "the database matches the spec",
        ),
        cond(
            RECONCILING,
            waiting.into(),
            reason,
            if waiting { message.clone() } else { String::new() },
        ),
        cond(
            STALLED,
            stuck.into(),
            reason,
            if stuck { message } else { String::new() },
        ),
    ];
    Outcome {
        conditions,
        live: Desired::Live {
            database_id: row_id.to_string(),
            digest: digest.to_string(),
        },
        requeue_after: None,
        pending_digest: Some(None),
        drop_conditions: Vec::new(),
        drift_corrected: Vec::new(),
    }
}

/// Passes the deletion of a LicenseGrant through the two-person rule.
pub async fn deletion_gate(
    lg: &LicenseGrant,
    pool: &PgPool,
    actor: &Actor,
    approvals: &approval::Inputs,
) -> Result<DeletionGate, crate::Error> {
    let deleting = report::Deleting {
        kind: KIND,
        object_key: name(lg),
        uid: lg.metadata.uid.as_deref().unwrap_or_default(),
        annotations: lg.metadata.annotations.as_ref(),
        spec: serde_json::to_value(&lg.spec)?,
        subject: subject(lg),
    };
    report::deletion_gate(pool, approvals, deleting, actor).await
}

/// Releases the imported row and leaves it in place (a license row is a
/// record; only a signed REVOCATION takes a grant away), carrying out an
/// approval in the same transaction when one was needed.
pub async fn cleanup(
    lg: &LicenseGrant,
    pool: &PgPool,
    actor: &Actor,
    approved: Option<ApprovedChange>,
) -> Result<(), crate::Error> {
    apply::release(pool, &attribution(lg, actor, String::new(), approved)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license_grant::signature::tests::spec;

    fn condition<'a>(o: &'a Outcome, type_: &str) -> &'a DesiredCondition {
        o.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    #[test]
    fn each_validity_reports_the_quota_and_what_kstatus_should_say() {
        let grant = validate::validate(&spec("")).expect("valid");
        let tenant = TenantLive {
            id: Uuid::nil(),
            slug: "acme".into(),
            allowed_namespaces: Vec::new(),
            instance_fingerprint: None,
        };
        let cases = [
            (Validity::Current, "True", "Live", "False", "False"),
            (Validity::Recorded, "True", "Live", "False", "False"),
            (Validity::NotYetValid, "False", "NotYetValid", "True", "False"),
            (Validity::Expired, "False", "Expired", "False", "True"),
            (Validity::Revoked(Utc::now()), "False", "Revoked", "False", "True"),
        ];
        for (validity, ready, reason, reconciling, stalled) in cases {
            let o = imported_outcome(&grant, &tenant, validity, "wipe-seat", 350, Uuid::nil(), "d");
            let r = condition(&o, READY);
            assert_eq!((r.status.as_str(), r.reason), (ready, reason), "{validity:?}");
            assert!(
                r.message.contains("tenant \"acme\" now holds 350 \"wipe-seat\""),
                "{}",
                r.message
            );
            assert_eq!(condition(&o, RECONCILING).status.as_str(), reconciling, "{validity:?}");
            assert_eq!(condition(&o, STALLED).status.as_str(), stalled, "{validity:?}");
            assert_eq!(condition(&o, SYNCED).status.as_str(), "True");
            assert!(matches!(o.live, Desired::Live { .. }), "the row exists in every case");
        }
    }

    #[test]
    fn a_refusal_keeps_naming_an_imported_row() {
        assert_eq!(refuse("X", "m".into(), true).live, Desired::Unchanged);
        assert_eq!(refuse("X", "m".into(), false).live, Desired::NotLive);
    }
}
