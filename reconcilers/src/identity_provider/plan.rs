//! Pure planning: what to write for an IdentityProvider, given the desired
//! row, the client secret's fingerprint and what the database holds.

use super::resolve::{IdpRow, Observed};
use super::validate::{DesiredIdp, Protocol};
use uuid::Uuid;

/// The row status the reference names for a provider awaiting its second admin.
pub const PENDING_APPROVAL: &str = "PENDING_APPROVAL";
/// The row status of an approved, exposed provider.
pub const ACTIVE: &str = "ACTIVE";

/// The column values to write (the sealed secret travels separately).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Values {
    /// The tenant row.
    pub tenant_id: Uuid,
    /// The desired provider.
    pub idp: DesiredIdp,
}

impl Values {
    /// Whether the row already holds exactly these spec-derived values.
    pub fn matches(&self, row: &IdpRow) -> bool {
        self.differences(row).is_empty()
    }

    /// The columns of `row` that differ from these spec-derived values.
    pub fn differences(&self, row: &IdpRow) -> Vec<&'static str> {
        let d = &self.idp;
        let mut columns = vec![
            ("tenant_id", row.tenant_id == self.tenant_id),
            ("name", row.name == d.name),
            ("enabled", row.enabled == d.enabled),
            ("protocol", row.protocol == d.protocol_name()),
        ];
        match &d.protocol {
            Protocol::Oidc(o) => columns.extend([
                ("issuer_url", row.issuer_url.as_deref() == Some(o.issuer_url.as_str())),
                ("client_id", row.client_id.as_deref() == Some(o.client_id.as_str())),
                ("scopes", row.scopes == o.scopes),
                ("subject_claim", row.subject_claim == o.subject_claim),
                ("email_claim", row.email_claim == o.email_claim),
                ("display_name_claim", row.display_name_claim == o.display_name_claim),
                ("groups_claim_path", row.groups_claim_path == o.groups_claim_path),
                ("groups_claim_format", row.groups_claim_format == o.groups_claim_format),
                ("fetch_userinfo", row.fetch_userinfo == o.fetch_userinfo),
                (
                    "allowed_email_domains",
                    row.allowed_email_domains == o.allowed_email_domains,
                ),
                ("iat_window_seconds", row.iat_window_seconds == o.iat_window_seconds),
                (
                    "jwks_cache_ttl_seconds",
                    row.jwks_cache_ttl_seconds == o.jwks_cache_ttl_seconds,
                ),
                ("metadata_url", row.metadata_url.is_none()),
            ]),
            Protocol::Saml(s) => columns.extend([
                (
                    "metadata_url",
                    row.metadata_url.as_deref() == Some(s.metadata_url.as_str()),
                ),
                ("entity_id", row.entity_id.as_deref() == Some(s.entity_id.as_str())),
                ("sso_url", row.sso_url.as_deref() == Some(s.sso_url.as_str())),
                ("issuer_url", row.issuer_url.is_none()),
            ]),
        }
        crate::outcome::differing(columns)
    }
}

/// Why a row is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A new provider.
    Create,
    /// Our provider still awaits its approval (stored PENDING_APPROVAL).
    Activate,
    /// The spec changed since the last write.
    SpecChanged,
    /// Someone edited the managed row behind the operator's back.
    DriftCorrected,
    /// The adopt annotation takes over a row made outside the operator.
    Adopted,
    /// Only the client secret changed.
    SecretRotated,
    /// The row is right; only the recorded digest is stale.
    RecordDigest,
}

impl Cause {
    /// Whether this write puts a configuration live that nobody has checked
    /// yet, so discovery must pass (and, under a policy, a second person
    /// must approve) first.
    pub fn changes_configuration(self) -> bool {
        matches!(self, Self::Create | Self::Activate | Self::SpecChanged | Self::Adopted)
    }

    /// What this write does to the declared intent (see [`crate::report::Intent`]).
    pub fn intent(self) -> crate::report::Intent {
        use crate::report::Intent;
        match self {
            Self::Create | Self::Activate => Intent::New,
            Self::Adopted => Intent::TakeOver,
            // The referenced Secret's content rotates at once: an old secret
            // must stop working without waiting for a review.
            Self::DriftCorrected | Self::SecretRotated => Intent::Restored,
            Self::SpecChanged | Self::RecordDigest => Intent::Changed,
        }
    }

    /// The audit action.
    pub fn action(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Activate => "activate",
            Self::SpecChanged => "update",
            Self::DriftCorrected => "correct-drift",
            Self::Adopted => "adopt",
            Self::SecretRotated => "rotate-secret",
            Self::RecordDigest => "record-digest",
        }
    }
}

/// A write to the provider row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The row to update; None inserts.
    pub row_id: Option<Uuid>,
    /// The values to write.
    pub values: Values,
    /// Why.
    pub cause: Cause,
    /// Whether a newly sealed client secret replaces the stored one.
    pub rotate_secret: bool,
    /// Whether the row is (or would be) new or still PENDING_APPROVAL, so the
    /// two-person rule treats the change as a create.
    pub is_create: bool,
}

/// What the reconcile will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The referenced tenant is not live in the database (yet).
    WaitForTenant,
    /// The tenant does not list this object's namespace.
    NotPermitted {
        /// The tenant's slug.
        tenant_slug: String,
    },
    /// A row made outside the operator holds the name and no adopt annotation is set.
    AlreadyExists {
        /// The existing row.
        row_id: Uuid,
    },
    /// Another object manages the row holding the name.
    Conflict {
        /// namespace/name of the managing object.
        owner: String,
    },
    /// Write the row.
    Write(Box<Write>),
    /// Nothing to write.
    Noop {
        /// The row.
        row_id: Uuid,
    },
}

/// The facts about the object itself.
#[derive(Clone, Debug)]
pub struct Subject<'a> {
    /// uid.
    pub uid: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Current digest.
    pub digest: &'a str,
    /// Whether the adopt annotation is set.
    pub adopt: bool,
    /// The fingerprint of the client secret the spec references (OIDC only).
    pub secret_fingerprint: Option<&'a str>,
}

/// Decides what to write.
pub fn plan(desired: DesiredIdp, observed: &Observed, subject: &Subject<'_>) -> Plan {
    let Some(tenant) = &observed.tenant else {
        return Plan::WaitForTenant;
    };
    if !tenant.admits(subject.namespace) {
        return Plan::NotPermitted {
            tenant_slug: tenant.slug.clone(),
        };
    }
    let values = Values {
        tenant_id: tenant.id,
        idp: desired,
    };
    let wants_secret = matches!(values.idp.protocol, Protocol::Oidc(_));
    let secret_differs = |stored: Option<&str>| wants_secret && stored != subject.secret_fingerprint;
    if let Some((row, owner)) = &observed.name_taken {
        return match owner {
            Some(owner) => Plan::Conflict {
                owner: owner.object_key(),
            },
            None if !subject.adopt || observed.ours.is_some() => Plan::AlreadyExists { row_id: row.id },
            None => Plan::Write(Box::new(Write {
                row_id: Some(row.id),
                values,
                cause: Cause::Adopted,
                // An adopted row's secret was set by someone else: replace it
                // with the one the spec names.
                rotate_secret: wants_secret,
                is_create: row.status == PENDING_APPROVAL,
            })),
        };
    }
    let Some((row, owner)) = &observed.ours else {
        return Plan::Write(Box::new(Write {
            row_id: None,
            values,
            cause: Cause::Create,
            rotate_secret: wants_secret,
            is_create: true,
        }));
    };
    let rotate_secret = secret_differs(observed.stored_secret_fingerprint.as_deref());
    let pending = row.status == PENDING_APPROVAL;
    let same_values = values.matches(row);
    let digest_current = owner.digest == subject.digest;
    let cause = match (same_values, digest_current) {
        _ if pending => Cause::Activate,
        (false, true) => Cause::DriftCorrected,
        (false, false) => Cause::SpecChanged,
        // The same Secret with new content: a rotation. A spec naming a
        // different Secret is a change of configuration like any other.
        (true, true) if rotate_secret => Cause::SecretRotated,
        (true, false) if rotate_secret => Cause::SpecChanged,
        (true, false) => Cause::RecordDigest,
        (true, true) => return Plan::Noop { row_id: row.id },
    };
    Plan::Write(Box::new(Write {
        row_id: Some(row.id),
        values,
        cause,
        rotate_secret,
        is_create: pending,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Ownership;
    use crate::identity_provider::resolve::TenantLive;
    use crate::identity_provider::validate::SamlValues;

    fn desired() -> DesiredIdp {
        DesiredIdp {
            tenant_name: "acme".into(),
            name: "Acme SAML".into(),
            enabled: true,
            protocol: Protocol::Saml(SamlValues {
                metadata_url: "https://idp.example/md".into(),
                entity_id: "urn:acme".into(),
                sso_url: "https://idp.example/sso".into(),
            }),
        }
    }

    fn tenant() -> TenantLive {
        TenantLive {
            id: Uuid::from_u128(1),
            slug: "acme".into(),
            allowed_namespaces: vec!["team-a".into()],
            instance_fingerprint: None,
        }
    }

    fn row(id: u128, status: &str) -> IdpRow {
        IdpRow {
            id: Uuid::from_u128(id),
            tenant_id: Uuid::from_u128(1),
            name: "Acme SAML".into(),
            protocol: "SAML".into(),
            status: status.into(),
            enabled: true,
            issuer_url: None,
            client_id: None,
            client_secret_ref: None,
            scopes: vec![],
            subject_claim: "sub".into(),
            email_claim: "email".into(),
            display_name_claim: "name".into(),
            groups_claim_path: "groups".into(),
            groups_claim_format: "string_array".into(),
            fetch_userinfo: false,
            allowed_email_domains: vec![],
            iat_window_seconds: 300,
            jwks_cache_ttl_seconds: 3600,
            metadata_url: Some("https://idp.example/md".into()),
            entity_id: Some("urn:acme".into()),
            sso_url: Some("https://idp.example/sso".into()),
        }
    }

    fn owner(id: u128, uid: &str, digest: &str) -> Ownership {
        Ownership {
            row_id: Uuid::from_u128(id),
            object_uid: uid.into(),
            object_ns: "team-a".into(),
            object_name: format!("obj-{uid}"),
            digest: digest.into(),
        }
    }

    fn observed() -> Observed {
        Observed {
            tenant: Some(tenant()),
            ours: None,
            name_taken: None,
            stored_secret_fingerprint: None,
        }
    }

    fn subject(namespace: &str) -> Subject<'_> {
        Subject {
            uid: "me",
            namespace,
            digest: "d",
            adopt: false,
            secret_fingerprint: None,
        }
    }

    fn cause(plan: &Plan) -> Option<Cause> {
        match plan {
            Plan::Write(w) => Some(w.cause),
            _ => None,
        }
    }

    #[test]
    fn tenant_missing_or_not_permitting_writes_nothing() {
        let none = Observed {
            tenant: None,
            ..observed()
        };
        assert_eq!(plan(desired(), &none, &subject("team-a")), Plan::WaitForTenant);
        assert_eq!(
            plan(desired(), &observed(), &subject("team-b")),
            Plan::NotPermitted {
                tenant_slug: "acme".into()
            }
        );
    }

    #[test]
    fn decisions_table() {
        let mut edited = row(5, ACTIVE);
        edited.sso_url = Some("https://evil.example/sso".into());
        let cases: Vec<(&str, Observed, Option<Cause>)> = vec![
            ("no row: create", observed(), Some(Cause::Create)),
            (
                "ours, same, current digest: nothing",
                Observed {
                    ours: Some((row(5, ACTIVE), owner(5, "me", "d"))),
                    ..observed()
                },
                None,
            ),
            (
                "ours, pending: activate through the gate",
                Observed {
                    ours: Some((row(5, PENDING_APPROVAL), owner(5, "me", "d"))),
                    ..observed()
                },
                Some(Cause::Activate),
            ),
            (
                "ours, edited behind our back: correct drift",
                Observed {
                    ours: Some((edited.clone(), owner(5, "me", "d"))),
                    ..observed()
                },
                Some(Cause::DriftCorrected),
            ),
            (
                "ours, spec changed",
                Observed {
                    ours: Some((edited, owner(5, "me", "old"))),
                    ..observed()
                },
                Some(Cause::SpecChanged),
            ),
            (
                "ours, same values, new digest",
                Observed {
                    ours: Some((row(5, ACTIVE), owner(5, "me", "old"))),
                    ..observed()
                },
                Some(Cause::RecordDigest),
            ),
        ];
        for (name, obs, want) in cases {
            assert_eq!(cause(&plan(desired(), &obs, &subject("team-a"))), want, "{name}");
        }
    }

    #[test]
    fn a_name_held_by_another_row_is_a_conflict_or_needs_adopt() {
        let taken_by_other = Observed {
            name_taken: Some((row(6, ACTIVE), Some(owner(6, "other", "x")))),
            ..observed()
        };
        assert_eq!(
            plan(desired(), &taken_by_other, &subject("team-a")),
            Plan::Conflict {
                owner: "team-a/obj-other".into()
            }
        );
        let unowned = Observed {
            name_taken: Some((row(6, ACTIVE), None)),
            ..observed()
        };
        assert_eq!(
            plan(desired(), &unowned, &subject("team-a")),
            Plan::AlreadyExists {
                row_id: Uuid::from_u128(6)
            }
        );
        let adopt = Subject {
            adopt: true,
            ..subject("team-a")
        };
        assert_eq!(cause(&plan(desired(), &unowned, &adopt)), Some(Cause::Adopted));
    }

    #[test]
    fn a_changed_client_secret_rotates_without_counting_as_a_spec_change() {
        let mut d = desired();
        d.protocol = Protocol::Oidc(crate::identity_provider::validate::OidcValues {
            issuer_url: "https://idp.example".into(),
            client_id: "c".into(),
            scopes: vec!["openid".into()],
            subject_claim: "sub".into(),
            email_claim: "email".into(),
            display_name_claim: "name".into(),
            groups_claim_path: "groups".into(),
            groups_claim_format: "string_array".into(),
            fetch_userinfo: false,
            allowed_email_domains: vec![],
            iat_window_seconds: 300,
            jwks_cache_ttl_seconds: 3600,
        });
        let mut r = row(5, ACTIVE);
        r.protocol = "OIDC".into();
        r.issuer_url = Some("https://idp.example".into());
        r.client_id = Some("c".into());
        r.scopes = vec!["openid".into()];
        r.metadata_url = None;
        r.entity_id = None;
        r.sso_url = None;
        let obs = Observed {
            ours: Some((r, owner(5, "me", "d"))),
            stored_secret_fingerprint: Some("old".into()),
            ..observed()
        };
        let s = Subject {
            secret_fingerprint: Some("new"),
            ..subject("team-a")
        };
        let p = plan(d.clone(), &obs, &s);
        assert_eq!(cause(&p), Some(Cause::SecretRotated));
        assert!(!Cause::SecretRotated.changes_configuration());
        let same = Subject {
            secret_fingerprint: Some("old"),
            ..subject("team-a")
        };
        assert_eq!(
            plan(d, &obs, &same),
            Plan::Noop {
                row_id: Uuid::from_u128(5)
            }
        );
    }
}
