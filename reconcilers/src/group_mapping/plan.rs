//! Pure planning for a GroupMapping.

use super::resolve::{MappingRow, Observed};
use super::validate::DesiredMapping;
use uuid::Uuid;

/// The column values to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Values {
    /// The provider row.
    pub identity_provider_id: Uuid,
    /// Group name.
    pub group_name: String,
    /// Role.
    pub role: &'static str,
}

impl Values {
    fn matches(&self, row: &MappingRow) -> bool {
        row.identity_provider_id == self.identity_provider_id
            && row.group_name == self.group_name
            && row.role == self.role
    }
}

/// Why a row is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A new mapping.
    Create,
    /// The spec changed.
    SpecChanged,
    /// Someone edited the managed row behind the operator's back.
    DriftCorrected,
    /// The adopt annotation takes over a row made outside the operator.
    Adopted,
    /// The row is right; only the recorded digest is stale.
    RecordDigest,
}

impl Cause {
    /// The audit action.
    pub fn action(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::SpecChanged => "update",
            Self::DriftCorrected => "correct-drift",
            Self::Adopted => "adopt",
            Self::RecordDigest => "record-digest",
        }
    }
}

/// What the reconcile will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The referenced provider is not live in the database (yet).
    WaitForProvider,
    /// A row made outside the operator maps the group and no adopt annotation is set.
    AlreadyExists {
        /// The existing row.
        row_id: Uuid,
    },
    /// Another object manages the row mapping the group.
    Conflict {
        /// namespace/name of the managing object.
        owner: String,
    },
    /// Write the row (None inserts).
    Write {
        /// The row to update, or None to insert.
        row_id: Option<Uuid>,
        /// Values.
        values: Values,
        /// Why.
        cause: Cause,
    },
    /// Nothing to write.
    Noop {
        /// The row.
        row_id: Uuid,
    },
}

/// Decides what to write.
pub fn plan(desired: DesiredMapping, observed: &Observed, digest: &str, adopt: bool) -> Plan {
    let Some(provider) = &observed.provider else {
        return Plan::WaitForProvider;
    };
    let values = Values {
        identity_provider_id: provider.id,
        group_name: desired.group_name,
        role: desired.role,
    };
    if let Some((row, owner)) = &observed.group_taken {
        return match owner {
            Some(owner) => Plan::Conflict {
                owner: owner.object_key(),
            },
            None if !adopt || observed.ours.is_some() => Plan::AlreadyExists { row_id: row.id },
            None => Plan::Write {
                row_id: Some(row.id),
                values,
                cause: Cause::Adopted,
            },
        };
    }
    let Some((row, owner)) = &observed.ours else {
        return Plan::Write {
            row_id: None,
            values,
            cause: Cause::Create,
        };
    };
    let cause = match (values.matches(row), owner.digest == digest) {
        (true, true) => return Plan::Noop { row_id: row.id },
        (true, false) => Cause::RecordDigest,
        (false, true) => Cause::DriftCorrected,
        (false, false) => Cause::SpecChanged,
    };
    Plan::Write {
        row_id: Some(row.id),
        values,
        cause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Ownership;
    use crate::group_mapping::resolve::ProviderLive;

    fn desired(role: &'static str) -> DesiredMapping {
        DesiredMapping {
            provider_name: "sso".into(),
            group_name: "admins".into(),
            role,
        }
    }

    fn row(id: u128, role: &str) -> MappingRow {
        MappingRow {
            id: Uuid::from_u128(id),
            identity_provider_id: Uuid::from_u128(1),
            group_name: "admins".into(),
            role: role.into(),
        }
    }

    fn owner(id: u128, uid: &str, digest: &str) -> Ownership {
        Ownership {
            row_id: Uuid::from_u128(id),
            object_uid: uid.into(),
            object_ns: "team-a".into(),
            object_name: uid.into(),
            digest: digest.into(),
        }
    }

    fn observed(ours: Option<(MappingRow, Ownership)>, taken: Option<(MappingRow, Option<Ownership>)>) -> Observed {
        Observed {
            provider: Some(ProviderLive {
                id: Uuid::from_u128(1),
                status: "ACTIVE".into(),
            }),
            ours,
            group_taken: taken,
        }
    }

    fn cause(p: Plan) -> Result<Cause, Plan> {
        match p {
            Plan::Write { cause, .. } => Ok(cause),
            other => Err(other),
        }
    }

    #[test]
    fn decisions_table() {
        let id = Uuid::from_u128(5);
        let cases: Vec<(&str, Observed, bool, Result<Cause, Plan>)> = vec![
            (
                "no provider: wait",
                Observed {
                    provider: None,
                    ours: None,
                    group_taken: None,
                },
                false,
                Err(Plan::WaitForProvider),
            ),
            ("nothing yet: create", observed(None, None), false, Ok(Cause::Create)),
            (
                "same group mapped by another object: conflict",
                observed(None, Some((row(5, "AUDITOR"), Some(owner(5, "other", "x"))))),
                true,
                Err(Plan::Conflict {
                    owner: "team-a/other".into(),
                }),
            ),
            (
                "same group mapped by a person: needs adopt",
                observed(None, Some((row(5, "AUDITOR"), None))),
                false,
                Err(Plan::AlreadyExists { row_id: id }),
            ),
            (
                "adopt",
                observed(None, Some((row(5, "AUDITOR"), None))),
                true,
                Ok(Cause::Adopted),
            ),
            (
                "ours, unchanged",
                observed(Some((row(5, "AUDITOR"), owner(5, "me", "d"))), None),
                false,
                Err(Plan::Noop { row_id: id }),
            ),
            (
                "ours, role changed in the spec",
                observed(Some((row(5, "CLIENT_ADMIN"), owner(5, "me", "old"))), None),
                false,
                Ok(Cause::SpecChanged),
            ),
            (
                "ours, role edited in the database",
                observed(Some((row(5, "PLATFORM_ADMIN"), owner(5, "me", "d"))), None),
                false,
                Ok(Cause::DriftCorrected),
            ),
        ];
        for (name, obs, adopt, want) in cases {
            assert_eq!(cause(plan(desired("AUDITOR"), &obs, "d", adopt)), want, "{name}");
        }
    }
}
