//! Pure condition bookkeeping (Kubernetes API conventions, kstatus): lastTransitionTime moves only
//! when a status flips, conditions keep a stable order, and a status that
//! would differ only in timestamps is recognised as unchanged.

use countersign_crds::status::{APPROVED, READY, RECONCILING, STALLED, SYNCED};
use countersign_crds::{Condition, ConditionStatus};

/// A condition as a reconcile wants it, before timestamps are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    /// Condition type.
    pub type_: &'static str,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// One CamelCase word.
    pub reason: &'static str,
    /// Human-readable detail.
    pub message: String,
}

impl DesiredCondition {
    /// Shorthand constructor.
    pub fn new(type_: &'static str, status: ConditionStatus, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status,
            reason,
            message: truncate(&message.into(), 1024),
        }
    }
}

const ORDER: [&str; 5] = [READY, SYNCED, APPROVED, RECONCILING, STALLED];

fn rank(type_: &str) -> usize {
    ORDER.iter().position(|t| *t == type_).unwrap_or(ORDER.len())
}

/// Merges desired conditions into the previous ones.
///
/// Conditions not mentioned keep their previous value (so `Ready` can keep
/// describing what is live while the database is away). `Ready` is present
/// from the first visit, as Unknown if nothing better is known.
pub fn merge(
    previous: &[Condition],
    desired: &[DesiredCondition],
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous.to_vec();
    for want in desired {
        let old = previous.iter().find(|c| c.type_ == want.type_);
        let last_transition_time = match old {
            Some(o) if o.status == want.status => o.last_transition_time.clone(),
            _ => now.to_string(),
        };
        let cond = Condition {
            type_: want.type_.to_string(),
            status: want.status,
            reason: want.reason.to_string(),
            message: want.message.clone(),
            last_transition_time,
            observed_generation: generation,
        };
        match out.iter_mut().find(|c| c.type_ == want.type_) {
            Some(slot) => *slot = cond,
            None => out.push(cond),
        }
    }
    if !out.iter().any(|c| c.type_ == READY) {
        out.push(Condition {
            type_: READY.into(),
            status: ConditionStatus::Unknown,
            reason: "Reconciling".into(),
            message: "the controller has not finished its first reconcile".into(),
            last_transition_time: now.to_string(),
            observed_generation: generation,
        });
    }
    out.sort_by(|a, b| rank(&a.type_).cmp(&rank(&b.type_)).then_with(|| a.type_.cmp(&b.type_)));
    out
}

/// Cuts text to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConditionStatus::{False, True};

    fn ready(status: ConditionStatus, reason: &'static str) -> DesiredCondition {
        DesiredCondition::new(READY, status, reason, "m")
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = merge(&[], &[ready(False, "Pending")], Some(1), "t1");
        let same = merge(
            &first,
            &[DesiredCondition::new(READY, False, "Other", "new message")],
            Some(2),
            "t2",
        );
        assert_eq!(same[0].last_transition_time, "t1");
        assert_eq!(same[0].reason, "Other");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(&same, &[ready(True, "Live")], Some(2), "t3");
        assert_eq!(flipped[0].last_transition_time, "t3");
    }

    #[test]
    fn unmentioned_conditions_are_kept_and_ready_always_exists() {
        let first = merge(&[], &[DesiredCondition::new(SYNCED, True, "Ok", "")], Some(1), "t1");
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].type_, READY);
        assert_eq!(first[0].status, ConditionStatus::Unknown);
        let second = merge(
            &first,
            &[DesiredCondition::new(STALLED, False, "Ok", "")],
            Some(1),
            "t2",
        );
        assert!(second.iter().any(|c| c.type_ == SYNCED));
        assert_eq!(
            second.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            [READY, SYNCED, STALLED]
        );
    }

    #[test]
    fn merging_the_same_desired_twice_is_a_fixed_point() {
        let want = [ready(True, "Live"), DesiredCondition::new(SYNCED, True, "Ok", "")];
        let once = merge(&[], &want, Some(3), "t1");
        let twice = merge(&once, &want, Some(3), "t9");
        assert_eq!(once, twice);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        let cut = truncate("ééééé", 6);
        assert!(cut.ends_with("..."));
        assert!(cut.len() <= 6);
    }
}
