//! Pure planning: what to write, given the desired row and what the database holds.

use super::resolve::{Observed, Parent, TenantRow};
use super::validate::DesiredTenant;
use uuid::Uuid;

/// The column values to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Values {
    /// The desired tenant.
    pub tenant: DesiredTenant,
    /// The resolved parent row id.
    pub parent_tenant_id: Option<Uuid>,
}

impl Values {
    /// Whether the row already holds exactly these values.
    pub fn matches(&self, row: &TenantRow) -> bool {
        self.differences(row).is_empty()
    }

    /// The columns of `row` that differ from these values.
    pub fn differences(&self, row: &TenantRow) -> Vec<&'static str> {
        let t = &self.tenant;
        crate::outcome::differing([
            ("slug", row.slug == t.slug),
            ("name", row.name == t.name),
            ("description", row.description == t.description),
            ("parent_tenant_id", row.parent_tenant_id == self.parent_tenant_id),
            ("status", row.status == t.status),
            ("owner_email", row.owner_email == t.owner_email),
            ("owner_display_name", row.owner_display_name == t.owner_display_name),
            (
                "instance_fingerprint",
                row.instance_fingerprint == t.instance_fingerprint,
            ),
            ("branding", row.branding == t.branding),
            ("allowed_namespaces", row.allowed_namespaces == t.allowed_namespaces),
        ])
    }
}

/// Why an existing row is rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateCause {
    /// The spec changed since the last write.
    SpecChanged,
    /// Someone edited the managed row behind the operator's back.
    DriftCorrected,
    /// The adopt annotation takes over a row made outside the operator.
    Adopted,
}

impl UpdateCause {
    /// What this write does to the declared intent (see [`crate::report::Intent`]).
    pub fn intent(self) -> crate::report::Intent {
        use crate::report::Intent;
        match self {
            Self::SpecChanged => Intent::Changed,
            Self::DriftCorrected => Intent::Restored,
            Self::Adopted => Intent::TakeOver,
        }
    }

    /// The audit action.
    pub fn action(self) -> &'static str {
        match self {
            Self::SpecChanged => "update",
            Self::DriftCorrected => "correct-drift",
            Self::Adopted => "adopt",
        }
    }
}

/// What the reconcile will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The parent tenant does not exist yet.
    WaitForParent(String),
    /// A row made outside the operator holds the slug and no adopt annotation is set.
    AlreadyExists {
        /// The existing row.
        row_id: Uuid,
    },
    /// Another object manages the row holding the slug.
    Conflict {
        /// namespace/name of the managing object.
        owner: String,
    },
    /// Insert a new row.
    Create(Values),
    /// Rewrite an existing row.
    Update {
        /// The row.
        row_id: Uuid,
        /// New values.
        values: Values,
        /// Why.
        cause: UpdateCause,
    },
    /// The row is right; only the recorded digest is stale.
    RecordDigest {
        /// The row.
        row_id: Uuid,
    },
    /// Nothing to write.
    Noop {
        /// The row.
        row_id: Uuid,
    },
}

/// Decides what to write.
pub fn plan(desired: DesiredTenant, observed: &Observed, uid: &str, digest: &str, adopt: bool) -> Plan {
    let parent_tenant_id = match &observed.parent {
        Parent::None => None,
        Parent::Found(id) => Some(*id),
        Parent::Missing(slug) => return Plan::WaitForParent(slug.clone()),
    };
    let values = Values {
        tenant: desired,
        parent_tenant_id,
    };
    let Some(row) = &observed.row else {
        return Plan::Create(values);
    };
    match &observed.row_owner {
        Some(owner) if owner.object_uid != uid => Plan::Conflict {
            owner: owner.object_key(),
        },
        None if !adopt => Plan::AlreadyExists { row_id: row.id },
        None => Plan::Update {
            row_id: row.id,
            values,
            cause: UpdateCause::Adopted,
        },
        Some(owner) => {
            let same_values = values.matches(row);
            match (same_values, owner.digest == digest) {
                (true, true) => Plan::Noop { row_id: row.id },
                (true, false) => Plan::RecordDigest { row_id: row.id },
                (false, digest_current) => Plan::Update {
                    row_id: row.id,
                    values,
                    cause: if digest_current {
                        UpdateCause::DriftCorrected
                    } else {
                        UpdateCause::SpecChanged
                    },
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Ownership;

    fn desired() -> DesiredTenant {
        DesiredTenant {
            slug: "acme".into(),
            name: "Acme".into(),
            description: None,
            parent_slug: None,
            status: "ACTIVE".into(),
            owner_email: None,
            owner_display_name: None,
            instance_fingerprint: None,
            branding: None,
            allowed_namespaces: vec![],
        }
    }

    fn row(id: Uuid) -> TenantRow {
        TenantRow {
            id,
            slug: "acme".into(),
            name: "Acme".into(),
            description: None,
            parent_tenant_id: None,
            status: "ACTIVE".into(),
            owner_email: None,
            owner_display_name: None,
            instance_fingerprint: None,
            branding: None,
            allowed_namespaces: vec![],
        }
    }

    fn owner(id: Uuid, uid: &str, digest: &str) -> Ownership {
        Ownership {
            row_id: id,
            object_uid: uid.into(),
            object_ns: String::new(),
            object_name: format!("obj-{uid}"),
            digest: digest.into(),
        }
    }

    fn observed(row: Option<TenantRow>, row_owner: Option<Ownership>) -> Observed {
        Observed {
            row,
            row_owner,
            ours: None,
            parent: Parent::None,
        }
    }

    #[test]
    fn decisions_table() {
        let id = Uuid::new_v4();
        let mut renamed = row(id);
        renamed.name = "Edited in the admin UI".into();
        let cases: Vec<(&str, Observed, bool, Plan)> = vec![
            (
                "no row: create",
                observed(None, None),
                false,
                Plan::Create(Values {
                    tenant: desired(),
                    parent_tenant_id: None,
                }),
            ),
            (
                "unowned row: refuse",
                observed(Some(row(id)), None),
                false,
                Plan::AlreadyExists { row_id: id },
            ),
            (
                "unowned row with adopt: take over",
                observed(Some(row(id)), None),
                true,
                Plan::Update {
                    row_id: id,
                    values: Values {
                        tenant: desired(),
                        parent_tenant_id: None,
                    },
                    cause: UpdateCause::Adopted,
                },
            ),
            (
                "row owned by another object: conflict, even with adopt",
                observed(Some(row(id)), Some(owner(id, "other", "d"))),
                true,
                Plan::Conflict {
                    owner: "obj-other".into(),
                },
            ),
            (
                "ours, same values and digest: nothing",
                observed(Some(row(id)), Some(owner(id, "me", "d"))),
                false,
                Plan::Noop { row_id: id },
            ),
            (
                "ours, same values, new digest: record it",
                observed(Some(row(id)), Some(owner(id, "me", "old"))),
                false,
                Plan::RecordDigest { row_id: id },
            ),
            (
                "ours, edited behind our back: correct drift",
                observed(Some(renamed.clone()), Some(owner(id, "me", "d"))),
                false,
                Plan::Update {
                    row_id: id,
                    values: Values {
                        tenant: desired(),
                        parent_tenant_id: None,
                    },
                    cause: UpdateCause::DriftCorrected,
                },
            ),
            (
                "ours, spec changed: update",
                observed(Some(renamed), Some(owner(id, "me", "old"))),
                false,
                Plan::Update {
                    row_id: id,
                    values: Values {
                        tenant: desired(),
                        parent_tenant_id: None,
                    },
                    cause: UpdateCause::SpecChanged,
                },
            ),
        ];
        for (name, obs, adopt, want) in cases {
            assert_eq!(plan(desired(), &obs, "me", "d", adopt), want, "{name}");
        }
    }

    #[test]
    fn a_missing_parent_waits_before_anything_is_written() {
        let mut obs = observed(None, None);
        obs.parent = Parent::Missing("root".into());
        assert_eq!(
            plan(desired(), &obs, "me", "d", false),
            Plan::WaitForParent("root".into())
        );
    }
}
