//! The pure decision on a change: who asked, who approved, what the rule requires.

use chrono::{DateTime, Utc};
use std::collections::BTreeSet;

use super::*;

/// Whether the API server's admission guard is installed as shipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guard {
    /// Installed and unchanged.
    Intact,
    /// Missing or altered; the text says what.
    Broken(String),
}

/// An approval or rejection annotation pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Who (approved-by / rejected-by).
    pub by: String,
    /// The digest they decided on.
    pub digest: String,
}

/// Everything the decision needs, gathered by the caller.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// The digest of the change.
    pub digest: &'a str,
    /// The requested-by annotation.
    pub requester: Option<&'a str>,
    /// The declared-by annotation the API server stamped.
    pub declarer: Option<&'a str>,
    /// The accounts trusted to declare someone else as requester.
    pub gitops_accounts: &'a BTreeSet<String>,
    /// How many distinct people must approve.
    pub required_approvals: u32,
    /// The approvals this request has collected so far.
    pub collected: &'a [String],
    /// The deployer's username prefixes, dropped before people are compared.
    pub username_prefixes: &'a [String],
    /// The approved-by / approved-digest annotations.
    pub approval: Option<Mark>,
    /// The rejected-by / rejected-digest annotations.
    pub rejection: Option<Mark>,
    /// The optional rejected-reason annotation.
    pub rejection_reason: Option<&'a str>,
    /// The change request recorded for this digest, if any.
    pub recorded: Option<&'a Recorded>,
    /// The admission guard.
    pub guard: &'a Guard,
    /// Now.
    pub now: DateTime<Utc>,
}

/// What to do with a change covered by a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No requester declared: stall until one is.
    RequesterUnknown,
    /// The requester was declared by an account not trusted to declare
    /// someone else (or the API server did not stamp who declared it).
    RequesterUnverified {
        /// The declared requester.
        requester: String,
        /// Who declared it, if stamped.
        declarer: Option<String>,
    },
    /// Some, not all, of the required approvals are in.
    PartlyApproved {
        /// The distinct approvers so far.
        approvers: Vec<String>,
        /// How many are required.
        required: u32,
    },
    /// Wait for a second person.
    Awaiting,
    /// An approval exists, but for another digest.
    StaleApproval {
        /// The digest that was approved.
        approved: String,
    },
    /// The approval of this digest was on the object before the request was
    /// recorded: it was given for an earlier request and is spent.
    ApprovalPredatesRequest {
        /// Who had approved.
        approver: String,
    },
    /// The requester approved their own change.
    SelfApprovalIgnored {
        /// Who.
        approver: String,
    },
    /// The change was rejected; it stays rejected until the spec changes.
    Rejected {
        /// Who rejected.
        by: String,
        /// Why, if said.
        reason: Option<String>,
    },
    /// The request expired before anyone approved it.
    Expired,
    /// An approval is present but the admission guard is not intact.
    GuardMissing(String),
    /// Approved: apply it.
    Approved {
        /// Who approved.
        approver: String,
    },
}

impl Decision {
    /// The condition reason for `Approved`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RequesterUnknown => "RequesterUnknown",
            Self::RequesterUnverified { .. } => "RequesterUnverified",
            Self::Awaiting | Self::PartlyApproved { .. } => "AwaitingApproval",
            Self::StaleApproval { .. } | Self::ApprovalPredatesRequest { .. } => "StaleApproval",
            Self::SelfApprovalIgnored { .. } => "SelfApprovalIgnored",
            Self::Rejected { .. } => "Rejected",
            Self::Expired => "ApprovalExpired",
            Self::GuardMissing(_) => "ApprovalGuardMissing",
            Self::Approved { .. } => "Approved",
        }
    }
}

/// The requester of a change: the `requested-by` annotation, or else the
/// person who declared the change (the API server's stamp). A service
/// account that leaves the requester out names nobody.
pub fn requester_of<'a>(requested_by: Option<&'a str>, declarer: Option<&'a str>) -> Option<&'a str> {
    let named = |v: Option<&'a str>| v.map(str::trim).filter(|v| !v.is_empty());
    named(requested_by).or(named(declarer).filter(|d| !crate::identity::is_system(d)))
}

/// Decides on a change that a policy covers. Pure: every input is in `facts`.
/// `facts.recorded` is the request that decides on this digest (see
/// [`Recorded::decides`]); None when the digest is seen for the first time.
/// People are compared in their normal form ([`crate::identity`]).
pub fn decide(facts: &Facts<'_>) -> Decision {
    let same_person = |a: &str, b: &str| crate::identity::same_person_with(a, b, facts.username_prefixes);
    let Some(requester) = requester_of(facts.requester, facts.declarer) else {
        return Decision::RequesterUnknown;
    };
    // Only a GitOps account may declare someone else as requester.
    let declared_by_requester_or_gitops = facts
        .declarer
        .is_some_and(|d| same_person(d, requester) || facts.gitops_accounts.contains(d.trim()));
    if !declared_by_requester_or_gitops {
        return Decision::RequesterUnverified {
            requester: requester.to_string(),
            declarer: facts.declarer.map(str::to_string),
        };
    }
    let recorded = facts.recorded.filter(|r| r.decides(facts.digest));
    // A decision recorded for this request stands, whatever the annotations say now.
    if let Some(rec) = recorded {
        match rec.state.as_str() {
            "rejected" => {
                return Decision::Rejected {
                    by: rec.decided_by.clone().unwrap_or_default(),
                    reason: rec.note.clone(),
                };
            }
            "expired" => return Decision::Expired,
            _ => {}
        }
    }
    let recorded_requester = recorded.map_or(requester, |r| r.requester.as_str());
    if let Some(rejection) = facts.rejection.as_ref().filter(|r| r.digest == facts.digest) {
        return Decision::Rejected {
            by: rejection.by.clone(),
            reason: facts.rejection_reason.map(str::to_string),
        };
    }
    if recorded.is_some_and(|r| facts.now >= r.expires_at) {
        return Decision::Expired;
    }
    let awaiting = || {
        if facts.collected.is_empty() {
            Decision::Awaiting
        } else {
            Decision::PartlyApproved {
                approvers: facts.collected.to_vec(),
                required: facts.required_approvals,
            }
        }
    };
    let Some(approval) = &facts.approval else {
        return awaiting();
    };
    if approval.digest != facts.digest {
        return Decision::StaleApproval {
            approved: approval.digest.clone(),
        };
    }
    // Approvals are given for a digest shown as pending, so one that is
    // already there when the request is first recorded, or that was there
    // then and never went away, was given for an earlier request.
    let predates = match recorded {
        None => true,
        Some(rec) => rec.predating_approval.as_deref() == Some(approval.by.as_str()),
    };
    if predates {
        return Decision::ApprovalPredatesRequest {
            approver: approval.by.clone(),
        };
    }
    if let Guard::Broken(why) = facts.guard {
        return Decision::GuardMissing(why.clone());
    }
    let declarer = facts.declarer.unwrap_or_default();
    if [recorded_requester, requester, declarer]
        .iter()
        .any(|who| same_person(&approval.by, who))
    {
        return Decision::SelfApprovalIgnored {
            approver: approval.by.clone(),
        };
    }
    let mut approvers = facts.collected.to_vec();
    if !approvers.iter().any(|a| same_person(a, &approval.by)) {
        approvers.push(approval.by.clone());
    }
    if (approvers.len() as u32) < facts.required_approvals {
        return Decision::PartlyApproved {
            approvers,
            required: facts.required_approvals,
        };
    }
    Decision::Approved {
        approver: approvers.join(", "),
    }
}
