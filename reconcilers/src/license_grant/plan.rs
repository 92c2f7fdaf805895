//! Pure planning for a LicenseGrant: what to write given the verified grant
//! and what the database holds (its validity window is in `validity.rs`).

use super::resolve::{GrantRow, Observed};
use super::validate::DesiredGrant;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The column values to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Values {
    /// The verified grant.
    pub grant: DesiredGrant,
    /// The tenant row it is for.
    pub tenant_id: Uuid,
}

impl Values {
    /// Whether the row holds exactly the signed document (revoked_at is
    /// state, set by revocations, and not part of it).
    pub fn matches(&self, row: &GrantRow) -> bool {
        self.differences(row).is_empty()
    }

    /// The columns of `row` that differ from the signed document.
    pub fn differences(&self, row: &GrantRow) -> Vec<&'static str> {
        let g = &self.grant;
        crate::outcome::differing([
            ("grant_id", row.grant_id == g.grant_id),
            ("tenant_id", row.tenant_id == self.tenant_id),
            ("grant_type", row.grant_type == g.grant_type),
            (
                "instance_fingerprint",
                row.instance_fingerprint == g.instance_fingerprint,
            ),
            ("license_type", row.license_type == g.license_type),
            ("quantity", row.quantity == g.quantity),
            ("valid_from", row.valid_from == g.valid_from),
            ("valid_until", row.valid_until == g.valid_until),
            ("commercial_chain", row.commercial_chain == g.commercial_chain),
            ("addendum_of", row.addendum_of == g.addendum_of),
            ("revokes", row.revokes == g.revokes),
            ("key_id", row.key_id == g.key_id),
            ("signature", row.signature == g.signature),
        ])
    }
}

/// Why a row is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A new import.
    Create,
    /// Someone edited the imported row behind the operator's back: the
    /// signed document is restored.
    DriftCorrected,
    /// The adopt annotation takes over a row imported outside the operator.
    Adopted,
    /// The row is right; only the recorded digest is stale.
    RecordDigest,
}

impl Cause {
    /// What this write does to the declared intent (see [`crate::report::Intent`]).
    pub fn intent(self) -> crate::report::Intent {
        use crate::report::Intent;
        match self {
            Self::Create => Intent::New,
            Self::Adopted => Intent::TakeOver,
            Self::DriftCorrected => Intent::Restored,
            Self::RecordDigest => Intent::Changed,
        }
    }

    /// The audit action.
    pub fn action(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::DriftCorrected => "correct-drift",
            Self::Adopted => "adopt",
            Self::RecordDigest => "record-digest",
        }
    }
}

/// What the reconcile will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The referenced Tenant is not live in the database (yet).
    WaitForTenant,
    /// The grant is bound to another instance than the tenant's.
    FingerprintMismatch {
        /// The fingerprint the tenant row holds, if any.
        tenant: Option<String>,
    },
    /// The grant the addendum or revocation names is not imported (yet).
    WaitForReference {
        /// The spec field naming it.
        field: &'static str,
        /// Its grant ID.
        grant_id: Uuid,
    },
    /// The addendum or revocation names a grant it may not refer to.
    InvalidReference {
        /// The spec field naming it.
        field: &'static str,
        /// The rule broken, in words.
        rule: String,
    },
    /// Another object manages the row holding the grant ID.
    Conflict {
        /// Name of the managing object.
        owner: String,
    },
    /// A row imported outside Countersign holds the grant ID and no adopt annotation is set.
    AlreadyExists {
        /// The existing row.
        row_id: Uuid,
    },
    /// The grant is imported and the spec now says something else: a signed
    /// document is not edited in place.
    Immutable {
        /// The imported row.
        row_id: Uuid,
    },
    /// Write the row (None inserts).
    Write {
        /// The row to update, or None to insert.
        row_id: Option<Uuid>,
        /// Values (boxed: the other plans are small).
        values: Box<Values>,
        /// Why.
        cause: Cause,
        /// When the row was revoked, if it was (kept as it is).
        revoked_at: Option<DateTime<Utc>>,
    },
    /// Nothing to write.
    Noop {
        /// The row.
        row_id: Uuid,
        /// When it was revoked, if it was.
        revoked_at: Option<DateTime<Utc>>,
    },
}

/// Decides what to write.
pub fn plan(desired: DesiredGrant, observed: &Observed, digest: &str, adopt: bool) -> Plan {
    let Some(tenant) = &observed.tenant else {
        return Plan::WaitForTenant;
    };
    let fingerprint_mismatch = (tenant.instance_fingerprint.as_deref() != Some(desired.instance_fingerprint.as_str()))
        .then(|| Plan::FingerprintMismatch {
            tenant: tenant.instance_fingerprint.clone(),
        });
    let values = Values {
        grant: desired,
        tenant_id: tenant.id,
    };
    if let Some((row, owner)) = &observed.ours {
        // A revocation's effect is part of what it imported: a revoked grant
        // un-revoked behind the operator's back is drift like any other edit.
        let revocation_undone =
            values.grant.revokes.is_some() && observed.referenced.as_ref().is_some_and(|r| r.revoked_at.is_none());
        let matches = values.matches(row) && !revocation_undone;
        let same_spec = owner.digest == digest;
        // A changed spec of an imported grant is refused whatever else is
        // wrong with it: the signed document stays as imported.
        if !matches && !same_spec {
            return Plan::Immutable { row_id: row.id };
        }
        if let Some(mismatch) = fingerprint_mismatch {
            return mismatch;
        }
        let cause = match (matches, same_spec) {
            (true, true) => {
                return Plan::Noop {
                    row_id: row.id,
                    revoked_at: row.revoked_at,
                };
            }
            (true, false) => Cause::RecordDigest,
            (false, _) => Cause::DriftCorrected,
        };
        return Plan::Write {
            row_id: Some(row.id),
            values: Box::new(values),
            cause,
            revoked_at: row.revoked_at,
        };
    }
    if let Some(mismatch) = fingerprint_mismatch {
        return mismatch;
    }
    let adopting = match &observed.grant_taken {
        Some((_, Some(owner))) => {
            return Plan::Conflict {
                owner: owner.object_key(),
            };
        }
        Some((row, None)) if !adopt => return Plan::AlreadyExists { row_id: row.id },
        Some((row, None)) => Some(row),
        None => None,
    };
    if let Some(refusal) = check_reference(&values, observed.referenced.as_ref()) {
        return refusal;
    }
    match adopting {
        Some(row) => Plan::Write {
            row_id: Some(row.id),
            values: Box::new(values),
            cause: Cause::Adopted,
            revoked_at: row.revoked_at,
        },
        None => Plan::Write {
            row_id: None,
            values: Box::new(values),
            cause: Cause::Create,
            revoked_at: None,
        },
    }
}

/// The reference rules of an addendum or a revocation (reference 000
/// "validate addendum and revocation chains").
fn check_reference(values: &Values, referenced: Option<&GrantRow>) -> Option<Plan> {
    let (field, grant_id) = values.grant.reference()?;
    let Some(target) = referenced.filter(|r| r.grant_id == grant_id) else {
        return Some(Plan::WaitForReference { field, grant_id });
    };
    let refuse = |rule: String| Some(Plan::InvalidReference { field, rule });
    if target.tenant_id != values.tenant_id {
        return refuse(format!(
            "grant {grant_id} belongs to another tenant; a grant can only be amended or revoked for its own tenant"
        ));
    }
    let is_addendum = values.grant.addendum_of.is_some();
    if is_addendum {
        if target.grant_type != "GRANT" {
            return refuse(format!(
                "grant {grant_id} is a {}, and an addendum amends a GRANT",
                target.grant_type
            ));
        }
        if target.license_type != values.grant.license_type {
            return refuse(format!(
                "grant {grant_id} licenses {:?}, and an addendum must be for the same license type, not {:?}",
                target.license_type, values.grant.license_type
            ));
        }
        if let Some(at) = target.revoked_at {
            return refuse(format!(
                "grant {grant_id} was revoked at {}; it cannot be amended",
                at.to_rfc3339()
            ));
        }
    } else if target.grant_type == "REVOCATION" {
        return refuse(format!(
            "grant {grant_id} is itself a REVOCATION; only a GRANT or an ADDENDUM can be revoked"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Ownership;
    use crate::license_grant::resolve::TenantLive;
    use crate::license_grant::signature::tests::spec;
    use crate::license_grant::validate::validate;

    const BASE: &str = "11111111-1111-4111-8111-111111111111";

    fn desired(extra: &str) -> DesiredGrant {
        validate(&spec(extra)).expect("valid fixture")
    }

    fn addendum() -> DesiredGrant {
        let mut d = desired("");
        d.grant_type = "ADDENDUM";
        d.addendum_of = Some(Uuid::parse_str(BASE).expect("uuid"));
        d
    }

    fn revocation() -> DesiredGrant {
        let mut d = desired("");
        d.grant_type = "REVOCATION";
        d.revokes = Some(Uuid::parse_str(BASE).expect("uuid"));
        d
    }

    fn tenant(id: u128, fingerprint: Option<&str>) -> TenantLive {
        TenantLive {
            id: Uuid::from_u128(id),
            slug: "acme".into(),
            allowed_namespaces: Vec::new(),
            instance_fingerprint: fingerprint.map(str::to_string),
        }
    }

    fn row_of(d: &DesiredGrant, id: u128, tenant: u128) -> GrantRow {
        GrantRow {
            id: Uuid::from_u128(id),
            grant_id: d.grant_id,
            tenant_id: Uuid::from_u128(tenant),
            grant_type: d.grant_type.into(),
            instance_fingerprint: d.instance_fingerprint.clone(),
            license_type: d.license_type.clone(),
            quantity: d.quantity,
            valid_from: d.valid_from,
            valid_until: d.valid_until,
            commercial_chain: d.commercial_chain.clone(),
            addendum_of: d.addendum_of,
            revokes: d.revokes,
            revoked_at: None,
            key_id: d.key_id.clone(),
            signature: d.signature.clone(),
        }
    }

    fn base_row(tenant: u128, grant_type: &str, license_type: &str) -> GrantRow {
        let mut r = row_of(&desired(""), 9, tenant);
        r.grant_id = Uuid::parse_str(BASE).expect("uuid");
        r.grant_type = grant_type.into();
        r.license_type = license_type.into();
        r
    }

    fn owner(id: u128, uid: &str, digest: &str) -> Ownership {
        Ownership {
            row_id: Uuid::from_u128(id),
            object_uid: uid.into(),
            object_ns: String::new(),
            object_name: uid.into(),
            digest: digest.into(),
        }
    }

    fn observed() -> Observed {
        Observed {
            tenant: Some(tenant(1, Some("sha256:acme-instance-1"))),
            ours: None,
            grant_taken: None,
            referenced: None,
        }
    }

    /// A short name for a plan, so the table reads well.
    fn kind(p: &Plan) -> String {
        match p {
            Plan::Write { cause, .. } => format!("Write/{}", cause.action()),
            other => format!("{other:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap_or_default()
                .to_string(),
        }
    }

    #[test]
    fn decisions_table() {
        let d = desired("");
        let ours_same = (row_of(&d, 5, 1), owner(5, "me", "d"));
        let mut edited = row_of(&d, 5, 1);
        edited.quantity = 9_999;
        let cases: Vec<(&str, DesiredGrant, Observed, bool, &str)> = vec![
            (
                "no tenant: wait",
                d.clone(),
                Observed {
                    tenant: None,
                    ..observed()
                },
                false,
                "WaitForTenant",
            ),
            (
                "tenant without a fingerprint",
                d.clone(),
                Observed {
                    tenant: Some(tenant(1, None)),
                    ..observed()
                },
                false,
                "FingerprintMismatch",
            ),
            (
                "another instance",
                d.clone(),
                Observed {
                    tenant: Some(tenant(1, Some("sha256:other"))),
                    ..observed()
                },
                false,
                "FingerprintMismatch",
            ),
            ("nothing yet: import", d.clone(), observed(), false, "Write/create"),
            (
                "grant ID imported by another object: conflict, even with adopt",
                d.clone(),
                Observed {
                    grant_taken: Some((row_of(&d, 6, 1), Some(owner(6, "other", "x")))),
                    ..observed()
                },
                true,
                "Conflict",
            ),
            (
                "grant ID imported through the admin API: needs adopt",
                d.clone(),
                Observed {
                    grant_taken: Some((row_of(&d, 6, 1), None)),
                    ..observed()
                },
                false,
                "AlreadyExists",
            ),
            (
                "adopt",
                d.clone(),
                Observed {
                    grant_taken: Some((row_of(&d, 6, 1), None)),
                    ..observed()
                },
                true,
                "Write/adopt",
            ),
            (
                "imported, unchanged",
                d.clone(),
                Observed {
                    ours: Some(ours_same.clone()),
                    ..observed()
                },
                false,
                "Noop",
            ),
            (
                "imported, only the requester changed",
                d.clone(),
                Observed {
                    ours: Some((row_of(&d, 5, 1), owner(5, "me", "old"))),
                    ..observed()
                },
                false,
                "Write/record-digest",
            ),
            (
                "imported row edited in the database: restore the signed document",
                d.clone(),
                Observed {
                    ours: Some((edited.clone(), owner(5, "me", "d"))),
                    ..observed()
                },
                false,
                "Write/correct-drift",
            ),
            (
                "imported, spec changed: refused",
                d.clone(),
                Observed {
                    ours: Some((edited, owner(5, "me", "old"))),
                    ..observed()
                },
                false,
                "Immutable",
            ),
            (
                "imported, the tenant moved to another instance: reported, row kept",
                d.clone(),
                Observed {
                    tenant: Some(tenant(1, Some("sha256:other"))),
                    ours: Some(ours_same.clone()),
                    ..observed()
                },
                false,
                "FingerprintMismatch",
            ),
            (
                "imported, spec changed to another instance: immutable first",
                {
                    let mut other = d.clone();
                    other.instance_fingerprint = "sha256:other".into();
                    other
                },
                Observed {
                    ours: Some((row_of(&d, 5, 1), owner(5, "me", "old"))),
                    ..observed()
                },
                false,
                "Immutable",
            ),
            (
                "imported revocation whose grant was un-revoked in the database: restore",
                revocation(),
                Observed {
                    ours: Some((row_of(&revocation(), 5, 1), owner(5, "me", "d"))),
                    referenced: Some(base_row(1, "GRANT", "wipe-seat")),
                    ..observed()
                },
                false,
                "Write/correct-drift",
            ),
            (
                "imported revocation, grant still revoked: nothing",
                revocation(),
                Observed {
                    ours: Some((row_of(&revocation(), 5, 1), owner(5, "me", "d"))),
                    referenced: Some(GrantRow {
                        revoked_at: Some(Utc::now()),
                        ..base_row(1, "GRANT", "wipe-seat")
                    }),
                    ..observed()
                },
                false,
                "Noop",
            ),
            (
                "addendum before its grant: wait",
                addendum(),
                observed(),
                false,
                "WaitForReference",
            ),
            (
                "addendum of a grant of the same tenant",
                addendum(),
                Observed {
                    referenced: Some(base_row(1, "GRANT", "wipe-seat")),
                    ..observed()
                },
                false,
                "Write/create",
            ),
            (
                "addendum of another tenant's grant",
                addendum(),
                Observed {
                    referenced: Some(base_row(2, "GRANT", "wipe-seat")),
                    ..observed()
                },
                false,
                "InvalidReference",
            ),
            (
                "addendum of an addendum",
                addendum(),
                Observed {
                    referenced: Some(base_row(1, "ADDENDUM", "wipe-seat")),
                    ..observed()
                },
                false,
                "InvalidReference",
            ),
            (
                "addendum for another license type",
                addendum(),
                Observed {
                    referenced: Some(base_row(1, "GRANT", "other-seat")),
                    ..observed()
                },
                false,
                "InvalidReference",
            ),
            (
                "addendum of a revoked grant",
                addendum(),
                Observed {
                    referenced: Some(GrantRow {
                        revoked_at: Some(Utc::now()),
                        ..base_row(1, "GRANT", "wipe-seat")
                    }),
                    ..observed()
                },
                false,
                "InvalidReference",
            ),
            (
                "revocation before its grant: wait",
                revocation(),
                observed(),
                false,
                "WaitForReference",
            ),
            (
                "revocation of a grant of the same tenant",
                revocation(),
                Observed {
                    referenced: Some(base_row(1, "GRANT", "other-seat")),
                    ..observed()
                },
                false,
                "Write/create",
            ),
            (
                "revocation of an addendum",
                revocation(),
                Observed {
                    referenced: Some(base_row(1, "ADDENDUM", "wipe-seat")),
                    ..observed()
                },
                false,
                "Write/create",
            ),
            (
                "revocation of another tenant's grant",
                revocation(),
                Observed {
                    referenced: Some(base_row(2, "GRANT", "wipe-seat")),
                    ..observed()
                },
                false,
                "InvalidReference",
            ),
            (
                "revocation of a revocation",
                revocation(),
                Observed {
                    referenced: Some(base_row(1, "REVOCATION", "wipe-seat")),
                    ..observed()
                },
                false,
                "InvalidReference",
            ),
            (
                "a conflict is reported before a missing reference",
                revocation(),
                Observed {
                    grant_taken: Some((row_of(&d, 6, 1), Some(owner(6, "other", "x")))),
                    ..observed()
                },
                false,
                "Conflict",
            ),
        ];
        for (name, desired, obs, adopt, want) in cases {
            assert_eq!(kind(&plan(desired, &obs, "d", adopt)), want, "{name}");
        }
    }
}
