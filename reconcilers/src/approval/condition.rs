//! The Approved condition a decision shows.

use super::*;

/// The `Approved` condition describing a decision.
pub fn condition(decision: &Decision, digest: &str) -> crate::conditions::DesiredCondition {
    use countersign_crds::ConditionStatus::{False, True};
    use countersign_crds::status::APPROVED;
    let short = &digest[..digest.len().min(12)];
    let message = match decision {
        Decision::RequesterUnknown => {
            "a policy requires approval but metadata.annotations[countersign.dev/requested-by] is not set".to_string()
        }
        Decision::RequesterUnverified { requester, declarer } => match declarer {
            Some(declarer) => format!(
                "metadata.annotations[countersign.dev/requested-by] names {requester} but {declarer} declared it, \
                 and only a GitOps account an ApprovalPolicy lists may declare someone else; nothing is recorded \
                 or applied until the requester is the person who makes the change"
            ),
            None => format!(
                "metadata.annotations[countersign.dev/requested-by] names {requester} but the API server did not \
                 stamp countersign.dev/declared-by (is the admission policy countersign-stamp-declarer installed?); \
                 re-apply the change so who declared it is known"
            ),
        },
        Decision::PartlyApproved { approvers, required } => format!(
            "change {short} has {} of {required} approvals ({}); another person must approve digest {digest}",
            approvers.len(),
            approvers.join(", ")
        ),
        Decision::Awaiting => format!("change {short} awaits a second person's approval (digest {digest})"),
        Decision::StaleApproval { approved } => {
            format!("the approval was for digest {approved}, not the current {digest}; approve the current digest")
        }
        Decision::ApprovalPredatesRequest { approver } => format!(
            "the approval by {approver} was given for an earlier request of this configuration and is spent; \
             approve digest {digest} again"
        ),
        Decision::SelfApprovalIgnored { approver } => {
            format!("{approver} requested this change and cannot approve it; another person must")
        }
        Decision::Rejected { by, reason } => match reason {
            Some(r) => format!("rejected by {by}: {r}; change the spec to make a new request"),
            None => format!("rejected by {by}; change the spec to make a new request"),
        },
        Decision::Expired => "the change request expired before it was approved; change the spec to ask again".into(),
        Decision::GuardMissing(why) => {
            format!("approval not honoured: the admission guard is not installed as shipped ({why})")
        }
        Decision::Approved { approver } => format!("approved by {approver}"),
    };
    let status = if matches!(decision, Decision::Approved { .. }) {
        True
    } else {
        False
    };
    crate::conditions::DesiredCondition::new(APPROVED, status, decision.reason(), message)
}
