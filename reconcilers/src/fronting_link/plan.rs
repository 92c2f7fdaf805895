//! Pure planning for a FrontingLink.

use super::resolve::{LinkRow, Observed, Resource};
use super::validate::DesiredLink;
use uuid::Uuid;

/// The column values to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Values {
    /// Source resource row.
    pub source_resource_id: Uuid,
    /// Target resource row.
    pub target_resource_id: Uuid,
    /// `{source_scope: [target_scope, …]}` as the admin API stores it.
    pub scope_map: serde_json::Value,
}

impl Values {
    fn matches(&self, row: &LinkRow) -> bool {
        self.differences(row).is_empty()
    }

    /// The columns of `row` that differ from these values.
    pub fn differences(&self, row: &LinkRow) -> Vec<&'static str> {
        crate::outcome::differing([
            ("source_resource_id", row.source_resource_id == self.source_resource_id),
            ("target_resource_id", row.target_resource_id == self.target_resource_id),
            ("scope_map", row.scope_map == self.scope_map),
        ])
    }
}

/// Why a row is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A new link.
    Create,
    /// The scope map changed in the spec.
    SpecChanged,
    /// Someone edited the managed row behind the operator's back.
    DriftCorrected,
    /// The adopt annotation takes over a link made outside the operator.
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
    /// A referenced resource does not exist in the database.
    MissingResources {
        /// The slugs not found.
        missing: Vec<String>,
        /// Whether this object's link was live before (the resource went away).
        was_live: bool,
    },
    /// The scope map names scopes the resources do not define.
    UnknownScopes(Vec<String>),
    /// A link made outside the operator joins the pair and no adopt annotation is set.
    AlreadyExists {
        /// The existing row.
        row_id: Uuid,
    },
    /// Another object manages the link between the pair.
    Conflict {
        /// The managing object.
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

/// Every scope-map entry that the resources do not define, in words naming the field.
pub fn unknown_scopes(desired: &DesiredLink, source: &Resource, target: &Resource) -> Vec<String> {
    let mut problems = Vec::new();
    for (source_scope, targets) in &desired.scope_map {
        if !source.scopes.contains(source_scope) {
            problems.push(format!(
                "spec.scopeMap: {source_scope:?} is not a scope of source resource {:?} (it defines {:?})",
                source.slug, source.scopes
            ));
        }
        for t in targets {
            if !target.scopes.contains(t) {
                problems.push(format!(
                    "spec.scopeMap[{source_scope:?}]: {t:?} is not a scope of target resource {:?} (it defines {:?})",
                    target.slug, target.scopes
                ));
            }
        }
    }
    problems
}

/// Decides what to write.
pub fn plan(desired: &DesiredLink, observed: &Observed, digest: &str, adopt: bool) -> Plan {
    let (source, target) = match (&observed.source, &observed.target) {
        (Some(s), Some(t)) => (s, t),
        (s, t) => {
            let missing = [(s, &desired.source_slug), (t, &desired.target_slug)]
                .into_iter()
                .filter(|(r, _)| r.is_none())
                .map(|(_, slug)| slug.clone())
                .collect();
            return Plan::MissingResources {
                missing,
                was_live: observed.ours.is_some() || observed.ours_vanished,
            };
        }
    };
    let problems = unknown_scopes(desired, source, target);
    if !problems.is_empty() {
        return Plan::UnknownScopes(problems);
    }
    let values = Values {
        source_resource_id: source.id,
        target_resource_id: target.id,
        scope_map: serde_json::json!(desired.scope_map),
    };
    if let Some((row, owner)) = &observed.pair_taken {
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
    use std::collections::BTreeMap;

    fn resource(id: u128, slug: &str, scopes: &[&str]) -> Resource {
        Resource {
            id: Uuid::from_u128(id),
            slug: slug.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn desired(map: &[(&str, &[&str])]) -> DesiredLink {
        DesiredLink {
            source_slug: "gw".into(),
            target_slug: "api".into(),
            scope_map: map
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn observed() -> Observed {
        Observed {
            source: Some(resource(1, "gw", &["gw:read", "gw:write"])),
            target: Some(resource(2, "api", &["api:read", "api:write"])),
            ours: None,
            ours_vanished: false,
            pair_taken: None,
        }
    }

    fn row(map: serde_json::Value) -> LinkRow {
        LinkRow {
            id: Uuid::from_u128(9),
            source_resource_id: Uuid::from_u128(1),
            target_resource_id: Uuid::from_u128(2),
            scope_map: map,
        }
    }

    fn owner(uid: &str, digest: &str) -> Ownership {
        Ownership {
            row_id: Uuid::from_u128(9),
            object_uid: uid.into(),
            object_ns: String::new(),
            object_name: uid.into(),
            digest: digest.into(),
        }
    }

    #[test]
    fn missing_resources_wait_and_say_whether_the_link_was_live() {
        let want = desired(&[("gw:read", &["api:read"])]);
        let none = Observed {
            target: None,
            ..observed()
        };
        assert_eq!(
            plan(&want, &none, "d", false),
            Plan::MissingResources {
                missing: vec!["api".into()],
                was_live: false
            }
        );
        let vanished = Observed {
            target: None,
            ours_vanished: true,
            ..observed()
        };
        assert!(matches!(
            plan(&want, &vanished, "d", false),
            Plan::MissingResources { was_live: true, .. }
        ));
    }

    #[test]
    fn scope_map_keys_must_be_source_scopes_and_values_target_scopes() {
        let bad = desired(&[("api:read", &["gw:read"])]);
        let Plan::UnknownScopes(problems) = plan(&bad, &observed(), "d", false) else {
            panic!("expected UnknownScopes")
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("source resource \"gw\""));
        assert!(problems[1].contains("target resource \"api\""));
    }

    #[test]
    fn decisions_table() {
        let want = desired(&[("gw:read", &["api:read"])]);
        let stored = serde_json::json!({"gw:read": ["api:read"]});
        let edited = serde_json::json!({"gw:read": ["api:write"]});
        let cases: Vec<(&str, Observed, bool, Option<Cause>)> = vec![
            ("new", observed(), false, Some(Cause::Create)),
            (
                "unchanged",
                Observed {
                    ours: Some((row(stored.clone()), owner("me", "d"))),
                    ..observed()
                },
                false,
                None,
            ),
            (
                "drift",
                Observed {
                    ours: Some((row(edited.clone()), owner("me", "d"))),
                    ..observed()
                },
                false,
                Some(Cause::DriftCorrected),
            ),
            (
                "spec change",
                Observed {
                    ours: Some((row(edited.clone()), owner("me", "old"))),
                    ..observed()
                },
                false,
                Some(Cause::SpecChanged),
            ),
            (
                "adopt a link made in the admin API",
                Observed {
                    pair_taken: Some((row(stored.clone()), None)),
                    ..observed()
                },
                true,
                Some(Cause::Adopted),
            ),
        ];
        for (name, obs, adopt, want_cause) in cases {
            let got = match plan(&want, &obs, "d", adopt) {
                Plan::Write { cause, .. } => Some(cause),
                Plan::Noop { .. } => None,
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(got, want_cause, "{name}");
        }
        let other = Observed {
            pair_taken: Some((row(stored), Some(owner("other", "x")))),
            ..observed()
        };
        assert_eq!(plan(&want, &other, "d", true), Plan::Conflict { owner: "other".into() });
    }
}
