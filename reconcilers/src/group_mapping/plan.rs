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
        self.differences(row).is_empty()
    }

    /// The columns of `row` that differ from these values.
    pub fn differences(&self, row: &MappingRow) -> Vec<&'static str> {
        crate::outcome::differing([
            (
                "identity_provider_id",
                row.identity_provider_id == self.identity_provider_id,
            ),
            ("group_name", row.group_name == self.group_name),
            ("role", row.role == self.role),
        ])
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
    /// What this write does to the declared intent (see [`crate::report::Intent`]).
    pub fn intent(self) -> crate::report::Intent {
        use crate::report::Intent;
        match self {
            Self::Create => Intent::New,
            Self::Adopted => Intent::TakeOver,
            Self::DriftCorrected => Intent::Restored,
            Self::SpecChanged | Self::RecordDigest => Intent::Changed,
        }
    }

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
    /// The provider's tenant does not list the mapping's namespace.
    NotPermitted {
        /// The tenant's slug.
        tenant_slug: String,
    },
    /// A platform-wide role through a provider of a tenant other than the
    /// platform's own.
    PlatformRoleNotPermitted {
        /// The provider's tenant.
        tenant_slug: String,
    },
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

/// The object being planned for, beyond its spec.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// The mapping's namespace.
    pub namespace: &'a str,
    /// Digest of the declared intent.
    pub digest: &'a str,
    /// Whether the adopt annotation is set.
    pub adopt: bool,
    /// The slug of the platform's own tenant (operator configuration); None
    /// when no tenant may grant platform-wide roles.
    pub platform_tenant: Option<&'a str>,
}

/// Decides what to write.
pub fn plan(desired: DesiredMapping, observed: &Observed, subject: &Subject<'_>) -> Plan {
    let Subject {
        namespace,
        digest,
        adopt,
        platform_tenant,
    } = *subject;
    let Some(provider) = &observed.provider else {
        return Plan::WaitForProvider;
    };
    // Judged by the provider's tenant like every namespaced kind: a mapping
    // grants a role in that tenant, so that tenant must allow the namespace.
    if !provider.allowed_namespaces.iter().any(|ns| ns == namespace) {
        return Plan::NotPermitted {
            tenant_slug: provider.tenant_slug.clone(),
        };
    }
    if super::validate::is_platform_wide(desired.role) && platform_tenant != Some(provider.tenant_slug.as_str()) {
        return Plan::PlatformRoleNotPermitted {
            tenant_slug: provider.tenant_slug.clone(),
        };
    }
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
                tenant_slug: "acme".into(),
                allowed_namespaces: vec!["team-a".into()],
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
            let subject = Subject {
                namespace: "team-a",
                digest: "d",
                adopt,
                platform_tenant: None,
            };
            assert_eq!(cause(plan(desired("AUDITOR"), &obs, &subject)), want, "{name}");
        }
    }

    #[test]
    fn a_mapping_is_judged_by_its_providers_tenant() {
        let obs = observed(None, None);
        let subject = |namespace, platform_tenant| Subject {
            namespace,
            digest: "d",
            adopt: false,
            platform_tenant,
        };
        assert_eq!(
            plan(desired("AUDITOR"), &obs, &subject("team-b", None)),
            Plan::NotPermitted {
                tenant_slug: "acme".into()
            }
        );
        for role in ["PLATFORM_ADMIN", "BILLING_OPERATOR"] {
            for platform in [None, Some("platform")] {
                assert_eq!(
                    plan(desired(role), &obs, &subject("team-a", platform)),
                    Plan::PlatformRoleNotPermitted {
                        tenant_slug: "acme".into()
                    },
                    "{role} from an ordinary tenant"
                );
            }
            assert_eq!(
                cause(plan(desired(role), &obs, &subject("team-a", Some("acme")))),
                Ok(Cause::Create),
                "{role} through the platform's own tenant"
            );
        }
        assert_eq!(
            cause(plan(desired("CLIENT_ADMIN"), &obs, &subject("team-a", None))),
            Ok(Cause::Create)
        );
    }
}
