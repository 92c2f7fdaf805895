//! What one reconcile decided, and the pure step that turns it into status.

use crate::conditions::{self, DesiredCondition};
use countersign_crds::status::APPROVED;
use countersign_crds::{ConditionStatus, ResourceStatus};
use std::time::Duration;

/// The names of the columns whose values differ, from (name, equal) pairs:
/// what a drift correction reports (names only, never values).
pub fn differing(columns: impl IntoIterator<Item = (&'static str, bool)>) -> Vec<&'static str> {
    columns
        .into_iter()
        .filter_map(|(column, equal)| (!equal).then_some(column))
        .collect()
}

/// What a reconcile wants the object's status to say about the live row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Desired {
    /// Keep databaseId and liveDigest as they were (e.g. the database was away).
    Unchanged,
    /// This object manages no row (not created yet, conflict, deleted).
    NotLive,
    /// The row with this id holds the configuration with this digest.
    Live {
        /// Row id in the API database.
        database_id: String,
        /// Digest of the configuration the row holds.
        digest: String,
    },
}

/// The result of one pass of a kind's pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Conditions to set; others keep their previous value.
    pub conditions: Vec<DesiredCondition>,
    /// What is live.
    pub live: Desired,
    /// Come back after this long even if nothing changes (dependencies,
    /// conflicts that may clear).
    pub requeue_after: Option<Duration>,
    /// The digest awaiting approval: None keeps the previous value (only
    /// when the database could not be read), Some(None) clears it. Every
    /// pass that reads the database sets or clears it, so it always belongs
    /// to the spec on screen.
    pub pending_digest: Option<Option<String>>,
    /// Condition types that no longer apply (e.g. Approved once no policy covers the object).
    pub drop_conditions: Vec<&'static str>,
    /// The columns of the managed row this pass found edited behind the
    /// operator's back and restored (empty when nothing drifted). Names of
    /// columns, never their values.
    pub drift_corrected: Vec<&'static str>,
}

impl Outcome {
    /// The status the object should carry after this outcome.
    pub fn status(&self, previous: Option<&ResourceStatus>, generation: Option<i64>, now: &str) -> ResourceStatus {
        let previous = previous.cloned().unwrap_or_default();
        let pending_digest = self.pending_digest.clone().unwrap_or(previous.pending_digest.clone());
        let (database_id, live_digest) = match &self.live {
            Desired::Unchanged => (previous.database_id.clone(), previous.live_digest.clone()),
            Desired::NotLive => (None, None),
            Desired::Live { database_id, digest } => (Some(database_id.clone()), Some(digest.clone())),
        };
        let mut conditions = conditions::merge(
            &previous
                .conditions
                .iter()
                .filter(|c| !self.drop_conditions.contains(&c.type_.as_str()))
                .cloned()
                .collect::<Vec<_>>(),
            &self.conditions,
            generation,
            now,
        );
        // Approved=False describes a decision on a pending digest; with none
        // pending it would describe a spec that is no longer there.
        if pending_digest.is_none() {
            conditions.retain(|c| !(c.type_ == APPROVED && c.status != ConditionStatus::True));
        }
        ResourceStatus {
            observed_generation: generation,
            conditions,
            database_id,
            live_digest,
            pending_digest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use countersign_crds::status::{READY, SYNCED};

    fn outcome(live: Desired) -> Outcome {
        Outcome {
            conditions: vec![DesiredCondition::new(SYNCED, ConditionStatus::True, "Ok", "")],
            live,
            requeue_after: None,
            pending_digest: None,
            drop_conditions: Vec::new(),
            drift_corrected: Vec::new(),
        }
    }

    #[test]
    fn live_state_is_kept_replaced_or_cleared() {
        let live = outcome(Desired::Live {
            database_id: "id1".into(),
            digest: "d1".into(),
        })
        .status(None, Some(1), "t1");
        assert_eq!(
            (live.database_id.as_deref(), live.live_digest.as_deref()),
            (Some("id1"), Some("d1"))
        );
        let kept = outcome(Desired::Unchanged).status(Some(&live), Some(2), "t2");
        assert_eq!(
            (kept.database_id.as_deref(), kept.observed_generation),
            (Some("id1"), Some(2))
        );
        let cleared = outcome(Desired::NotLive).status(Some(&live), Some(2), "t2");
        assert_eq!((cleared.database_id, cleared.live_digest), (None, None));
    }

    #[test]
    fn a_cleared_pending_digest_takes_its_refusal_with_it() {
        let mut held = outcome(Desired::Unchanged);
        held.pending_digest = Some(Some("d1".into()));
        held.conditions.push(DesiredCondition::new(
            APPROVED,
            ConditionStatus::False,
            "AwaitingApproval",
            "d1",
        ));
        let waiting = held.status(None, Some(1), "t1");
        assert_eq!(waiting.pending_digest.as_deref(), Some("d1"));
        assert!(waiting.condition(APPROVED).is_some());
        let mut moved_on = outcome(Desired::Unchanged);
        moved_on.pending_digest = Some(None);
        let status = moved_on.status(Some(&waiting), Some(2), "t2");
        assert_eq!(status.pending_digest, None);
        assert!(
            status.condition(APPROVED).is_none(),
            "no decision about a spec that is gone"
        );
        let unreadable = outcome(Desired::Unchanged).status(Some(&waiting), Some(2), "t2");
        assert_eq!(
            unreadable.pending_digest.as_deref(),
            Some("d1"),
            "kept while the database is away"
        );
    }

    #[test]
    fn the_first_visit_sets_ready_unknown() {
        let status = outcome(Desired::Unchanged).status(None, Some(1), "t1");
        let ready = status.condition(READY).expect("Ready is set on the first visit");
        assert_eq!(ready.status, ConditionStatus::Unknown);
    }
}
