//! Pure planning: what to write for a WebhookSubscription, given the desired
//! row, the signing secret's fingerprint and what the database holds.

use super::resolve::{Observed, SubscriptionRow};
use super::validate::DesiredSubscription;
use uuid::Uuid;

/// The column values to write (the sealed secret travels separately).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Values {
    /// The tenant row.
    pub tenant_id: Uuid,
    /// Delivery endpoint.
    pub url: String,
    /// Event types, sorted.
    pub events: Vec<String>,
}

impl Values {
    /// Whether the row already holds exactly these values (and delivers:
    /// a subscription switched off behind the operator's back is drift).
    pub fn matches(&self, row: &SubscriptionRow) -> bool {
        self.differences(row).is_empty()
    }

    /// The columns of `row` that differ from these values.
    pub fn differences(&self, row: &SubscriptionRow) -> Vec<&'static str> {
        crate::outcome::differing([
            ("tenant_id", row.tenant_id == self.tenant_id),
            ("url", row.url == self.url),
            ("events", row.events == self.events),
            ("active", row.active),
        ])
    }

    /// The values a row holds now: what a rotation writes back unchanged
    /// while a change of the subscription itself waits for approval.
    pub fn of_row(row: &SubscriptionRow) -> Self {
        Self {
            tenant_id: row.tenant_id,
            url: row.url.clone(),
            events: row.events.clone(),
        }
    }
}

/// Why a row is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A new subscription.
    Create,
    /// The spec changed since the last write.
    SpecChanged,
    /// Someone edited the managed row behind the operator's back.
    DriftCorrected,
    /// The adopt annotation takes over a row made outside the operator.
    Adopted,
    /// Only the signing secret changed.
    SecretRotated,
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
            // A referenced Secret's content (or the rotate-secret annotation)
            // rotates at once: an old secret must stop working without waiting.
            Self::DriftCorrected | Self::SecretRotated => Intent::Restored,
            Self::SpecChanged | Self::RecordDigest => Intent::Changed,
        }
    }

    /// Whether this write changes where and what the platform delivers, so
    /// (under a policy) a second person must approve it first. Rotating a
    /// secret is not such a change: it must never wait behind a review.
    pub fn changes_configuration(self) -> bool {
        matches!(self, Self::Create | Self::SpecChanged | Self::Adopted)
    }

    /// The audit action.
    pub fn action(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::SpecChanged => "update",
            Self::DriftCorrected => "correct-drift",
            Self::Adopted => "adopt",
            Self::SecretRotated => "rotate-secret",
            Self::RecordDigest => "record-digest",
        }
    }
}

/// A write to the subscription row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The row to update; None inserts.
    pub row_id: Option<Uuid>,
    /// The values to write.
    pub values: Values,
    /// Why.
    pub cause: Cause,
    /// Whether a newly sealed signing secret replaces the stored one (always
    /// for a new or adopted row: the column is NOT NULL, and an adopted row's
    /// secret was set by someone else).
    pub rotate_secret: bool,
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
    /// A row made outside the operator subscribes the URL and no adopt annotation is set.
    AlreadyExists {
        /// The existing row.
        row_id: Uuid,
    },
    /// Another object manages the row subscribing the URL.
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
    /// Namespace.
    pub namespace: &'a str,
    /// Current digest.
    pub digest: &'a str,
    /// Whether the adopt annotation is set.
    pub adopt: bool,
    /// The fingerprint of the signing secret the object's Secret holds now.
    pub secret_fingerprint: &'a str,
}

/// Decides what to write.
pub fn plan(desired: DesiredSubscription, observed: &Observed, subject: &Subject<'_>) -> Plan {
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
        url: desired.url,
        events: desired.events,
    };
    if let Some((row, owner)) = &observed.url_taken {
        return match owner {
            Some(owner) => Plan::Conflict {
                owner: owner.object_key(),
            },
            None if !subject.adopt || observed.ours.is_some() => Plan::AlreadyExists { row_id: row.id },
            None => Plan::Write(Box::new(Write {
                row_id: Some(row.id),
                values,
                cause: Cause::Adopted,
                rotate_secret: true,
            })),
        };
    }
    let Some((row, owner)) = &observed.ours else {
        return Plan::Write(Box::new(Write {
            row_id: None,
            values,
            cause: Cause::Create,
            rotate_secret: true,
        }));
    };
    // A stored secret that was revoked behind our back reads as None and is
    // replaced like a changed one.
    let rotate_secret = observed.stored_secret_fingerprint.as_deref() != Some(subject.secret_fingerprint);
    let cause = match (values.matches(row), owner.digest == subject.digest) {
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
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Ownership;
    use crate::webhook_subscription::resolve::TenantLive;

    const URL: &str = "https://hooks.acme.example/wipe";

    fn desired() -> DesiredSubscription {
        DesiredSubscription {
            tenant_name: "acme".into(),
            url: URL.into(),
            events: vec!["certificate.issued".into()],
        }
    }

    fn row(id: u128) -> SubscriptionRow {
        SubscriptionRow {
            id: Uuid::from_u128(id),
            tenant_id: Uuid::from_u128(1),
            url: URL.into(),
            events: vec!["certificate.issued".into()],
            secret_ref: Uuid::from_u128(100 + id),
            active: true,
        }
    }

    fn owner(id: u128, name: &str, digest: &str) -> Ownership {
        Ownership {
            row_id: Uuid::from_u128(id),
            object_uid: format!("uid-{name}"),
            object_ns: "team-a".into(),
            object_name: name.into(),
            digest: digest.into(),
        }
    }

    fn observed() -> Observed {
        Observed {
            tenant: Some(TenantLive {
                id: Uuid::from_u128(1),
                slug: "acme".into(),
                allowed_namespaces: vec!["team-a".into()],
                instance_fingerprint: None,
            }),
            ours: None,
            url_taken: None,
            stored_secret_fingerprint: None,
        }
    }

    fn ours(row: SubscriptionRow, digest: &str, fp: Option<&str>) -> Observed {
        Observed {
            ours: Some((row, owner(5, "me", digest))),
            stored_secret_fingerprint: fp.map(str::to_string),
            ..observed()
        }
    }

    fn subject(namespace: &str) -> Subject<'_> {
        Subject {
            namespace,
            digest: "d",
            adopt: false,
            secret_fingerprint: "fp",
        }
    }

    /// What a plan writes: why, and whether with a new secret.
    type Written = Option<(Cause, bool)>;

    fn write(p: &Plan) -> Written {
        match p {
            Plan::Write(w) => Some((w.cause, w.rotate_secret)),
            _ => None,
        }
    }

    #[test]
    fn a_missing_or_refusing_tenant_writes_nothing() {
        let none = Observed {
            tenant: None,
            ..observed()
        };
        assert_eq!(plan(desired(), &none, &subject("team-a")), Plan::WaitForTenant);
        assert_eq!(
            plan(desired(), &observed(), &subject("intruder")),
            Plan::NotPermitted {
                tenant_slug: "acme".into()
            }
        );
        // The permission check comes before anything else, even a conflict.
        let taken = Observed {
            url_taken: Some((row(6), Some(owner(6, "other", "x")))),
            ..observed()
        };
        assert!(matches!(
            plan(desired(), &taken, &subject("intruder")),
            Plan::NotPermitted { .. }
        ));
    }

    #[test]
    fn decisions_table() {
        let mut edited = row(5);
        edited.events.push("tenant.changed".into());
        let mut switched_off = row(5);
        switched_off.active = false;
        let cases: Vec<(&str, Observed, Written)> = vec![
            (
                "no row: create with a sealed secret",
                observed(),
                Some((Cause::Create, true)),
            ),
            ("ours, same, same secret: nothing", ours(row(5), "d", Some("fp")), None),
            (
                "ours, the Secret changed: rotate only",
                ours(row(5), "d", Some("old-fp")),
                Some((Cause::SecretRotated, true)),
            ),
            (
                "ours, stored secret revoked behind our back: seal again",
                ours(row(5), "d", None),
                Some((Cause::SecretRotated, true)),
            ),
            (
                "ours, events edited in the database: correct drift",
                ours(edited.clone(), "d", Some("fp")),
                Some((Cause::DriftCorrected, false)),
            ),
            (
                "ours, switched off in the database: correct drift",
                ours(switched_off, "d", Some("fp")),
                Some((Cause::DriftCorrected, false)),
            ),
            (
                "ours, spec changed",
                ours(edited, "old", Some("fp")),
                Some((Cause::SpecChanged, false)),
            ),
            (
                "ours, spec changed and the Secret too",
                ours(
                    SubscriptionRow {
                        url: "https://elsewhere.example/".into(),
                        ..row(5)
                    },
                    "old",
                    Some("old-fp"),
                ),
                Some((Cause::SpecChanged, true)),
            ),
            (
                "ours, same values, new digest (e.g. verify toggled)",
                ours(row(5), "old", Some("fp")),
                Some((Cause::RecordDigest, false)),
            ),
        ];
        for (name, obs, want) in cases {
            assert_eq!(write(&plan(desired(), &obs, &subject("team-a"))), want, "{name}");
        }
    }

    #[test]
    fn a_url_held_by_another_row_is_a_conflict_or_needs_adopt() {
        let by_other = Observed {
            url_taken: Some((row(6), Some(owner(6, "other", "x")))),
            ..observed()
        };
        assert_eq!(
            plan(desired(), &by_other, &subject("team-a")),
            Plan::Conflict {
                owner: "team-a/other".into()
            }
        );
        let by_person = Observed {
            url_taken: Some((row(6), None)),
            ..observed()
        };
        assert_eq!(
            plan(desired(), &by_person, &subject("team-a")),
            Plan::AlreadyExists {
                row_id: Uuid::from_u128(6)
            }
        );
        let adopt = Subject {
            adopt: true,
            ..subject("team-a")
        };
        assert_eq!(
            write(&plan(desired(), &by_person, &adopt)),
            Some((Cause::Adopted, true)),
            "adopting replaces the secret someone else set"
        );
    }

    #[test]
    fn only_configuration_changes_wait_for_a_second_person() {
        assert!(Cause::Create.changes_configuration());
        assert!(Cause::SpecChanged.changes_configuration());
        assert!(Cause::Adopted.changes_configuration());
        assert!(!Cause::SecretRotated.changes_configuration());
        assert!(!Cause::DriftCorrected.changes_configuration());
        assert_eq!(Cause::SecretRotated.action(), "rotate-secret");
        assert_eq!(Values::of_row(&row(5)).events, ["certificate.issued"]);
    }
}
