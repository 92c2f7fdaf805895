//! Tests of the two-person rule's decision and records.

use super::*;
use chrono::{Duration, Utc};
use countersign_crds::approval_policy::{ApprovalPolicySpec, Operation};
use std::collections::BTreeSet;
use uuid::Uuid;

fn rec(state: &str, requester: &str, expires_in: i64) -> Recorded {
    Recorded {
        id: Uuid::nil(),
        digest: "D".into(),
        state: state.into(),
        requester: requester.into(),
        declared_by: Some(requester.into()),
        decided_by: Some("bob".into()),
        note: Some("no".into()),
        expires_at: Utc::now() + Duration::seconds(expires_in),
        predating_approval: None,
    }
}

fn mark(by: &str, digest: &str) -> Option<Mark> {
    Some(Mark {
        by: by.into(),
        digest: digest.into(),
    })
}

#[test]
fn decision_table() {
    let intact = Guard::Intact;
    let broken = Guard::Broken("policy missing".into());
    let pending = rec("pending", "alice", 3600);
    let expired_pending = rec("pending", "alice", -1);
    let rejected = rec("rejected", "alice", 3600);
    let approved = rec("approved", "alice", 3600);
    let expired = rec("expired", "alice", -1);
    let superseded = rec("superseded", "alice", 3600);
    let predated = Recorded {
        predating_approval: Some("bob".into()),
        ..rec("pending", "alice", 3600)
    };
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        Option<Mark>,
        Option<Mark>,
        Option<&'a Recorded>,
        &'a Guard,
        Decision,
    );
    let cases: Vec<Case> = vec![
        (
            "no requester",
            None,
            mark("bob", "D"),
            None,
            None,
            &intact,
            Decision::RequesterUnknown,
        ),
        (
            "nothing yet",
            Some("alice"),
            None,
            None,
            Some(&pending),
            &intact,
            Decision::Awaiting,
        ),
        (
            "first sight",
            Some("alice"),
            None,
            None,
            None,
            &intact,
            Decision::Awaiting,
        ),
        (
            "second person approves",
            Some("alice"),
            mark("bob", "D"),
            None,
            Some(&pending),
            &intact,
            Decision::Approved { approver: "bob".into() },
        ),
        (
            "approval for another digest",
            Some("alice"),
            mark("bob", "OLD"),
            None,
            Some(&pending),
            &intact,
            Decision::StaleApproval { approved: "OLD".into() },
        ),
        (
            "self approval",
            Some("alice"),
            mark("alice", "D"),
            None,
            Some(&pending),
            &intact,
            Decision::SelfApprovalIgnored {
                approver: "alice".into(),
            },
        ),
        (
            "guard missing",
            Some("alice"),
            mark("bob", "D"),
            None,
            Some(&pending),
            &broken,
            Decision::GuardMissing("policy missing".into()),
        ),
        (
            "guard missing without approval just waits",
            Some("alice"),
            None,
            None,
            Some(&pending),
            &broken,
            Decision::Awaiting,
        ),
        (
            "expired while pending",
            Some("alice"),
            mark("bob", "D"),
            None,
            Some(&expired_pending),
            &intact,
            Decision::Expired,
        ),
        (
            "expired stays expired",
            Some("alice"),
            mark("bob", "D"),
            None,
            Some(&expired),
            &intact,
            Decision::Expired,
        ),
        (
            "rejection annotation",
            Some("alice"),
            None,
            mark("bob", "D"),
            Some(&pending),
            &intact,
            Decision::Rejected {
                by: "bob".into(),
                reason: None,
            },
        ),
        (
            "recorded rejection sticks after the annotation is removed, approval or not",
            Some("alice"),
            mark("carol", "D"),
            None,
            Some(&rejected),
            &intact,
            Decision::Rejected {
                by: "bob".into(),
                reason: Some("no".into()),
            },
        ),
        (
            "rejection of another digest does not count",
            Some("alice"),
            None,
            mark("bob", "OLD"),
            Some(&pending),
            &intact,
            Decision::Awaiting,
        ),
        (
            "a spent approval does not approve a return to its digest",
            Some("alice"),
            mark("bob", "D"),
            None,
            Some(&approved),
            &intact,
            Decision::ApprovalPredatesRequest { approver: "bob".into() },
        ),
        (
            "a spent request with no approval on the object waits for a new one",
            Some("alice"),
            None,
            None,
            Some(&approved),
            &broken,
            Decision::Awaiting,
        ),
        (
            "an approval already there when the digest is first seen is not for this request",
            Some("alice"),
            mark("bob", "D"),
            None,
            None,
            &intact,
            Decision::ApprovalPredatesRequest { approver: "bob".into() },
        ),
        (
            "a superseded request can never be approved",
            Some("alice"),
            mark("bob", "D"),
            None,
            Some(&superseded),
            &intact,
            Decision::ApprovalPredatesRequest { approver: "bob".into() },
        ),
        (
            "the predating approval never went away",
            Some("alice"),
            mark("bob", "D"),
            None,
            Some(&predated),
            &intact,
            Decision::ApprovalPredatesRequest { approver: "bob".into() },
        ),
        (
            "another person's approval of a predated request counts",
            Some("alice"),
            mark("dave", "D"),
            None,
            Some(&predated),
            &intact,
            Decision::Approved {
                approver: "dave".into(),
            },
        ),
    ];
    for (name, requester, approval, rejection, recorded, guard, want) in cases {
        let no_accounts = BTreeSet::new();
        let facts = Facts {
            digest: "D",
            requester,
            declarer: requester,
            gitops_accounts: &no_accounts,
            required_approvals: 1,
            collected: &[],
            username_prefixes: &[],
            approval,
            rejection,
            rejection_reason: None,
            recorded,
            guard,
            now: Utc::now(),
        };
        assert_eq!(decide(&facts), want, "{name}");
    }
}

fn facts<'a>(
    requester: Option<&'a str>,
    declarer: Option<&'a str>,
    accounts: &'a BTreeSet<String>,
    approval: Option<Mark>,
    recorded: Option<&'a Recorded>,
) -> Facts<'a> {
    Facts {
        digest: "D",
        requester,
        declarer,
        gitops_accounts: accounts,
        required_approvals: 1,
        collected: &[],
        username_prefixes: &[],
        approval,
        rejection: None,
        rejection_reason: None,
        recorded,
        guard: &Guard::Intact,
        now: Utc::now(),
    }
}

#[test]
fn only_a_gitops_account_may_declare_someone_else() {
    let argo = "system:serviceaccount:argocd:argocd-application-controller";
    let accounts: BTreeSet<String> = [argo.to_string()].into();
    let none = BTreeSet::new();
    let pending = rec("pending", "carol", 3600);
    let forged = decide(&facts(
        Some("carol"),
        Some("mallory"),
        &accounts,
        mark("mallory", "D"),
        Some(&pending),
    ));
    assert_eq!(
        forged,
        Decision::RequesterUnverified {
            requester: "carol".into(),
            declarer: Some("mallory".into())
        }
    );
    let unstamped = decide(&facts(Some("carol"), None, &accounts, None, Some(&pending)));
    assert!(matches!(
        unstamped,
        Decision::RequesterUnverified { declarer: None, .. }
    ));
    let by_gitops = decide(&facts(
        Some("carol"),
        Some(argo),
        &accounts,
        mark("bob", "D"),
        Some(&pending),
    ));
    assert_eq!(by_gitops, Decision::Approved { approver: "bob".into() });
    let untrusted_account = decide(&facts(
        Some("carol"),
        Some(argo),
        &none,
        mark("bob", "D"),
        Some(&pending),
    ));
    assert!(matches!(untrusted_account, Decision::RequesterUnverified { .. }));
    // A person who leaves the requester out is the requester.
    let alice = rec("pending", "alice", 3600);
    assert_eq!(requester_of(None, Some("alice")), Some("alice"));
    assert_eq!(
        requester_of(Some(" "), Some(argo)),
        None,
        "a service account names nobody"
    );
    let own = decide(&facts(None, Some("alice"), &none, mark("alice", "D"), Some(&alice)));
    assert_eq!(
        own,
        Decision::SelfApprovalIgnored {
            approver: "alice".into()
        }
    );
}

#[test]
fn one_person_under_two_spellings_cannot_approve_their_own_change() {
    let none = BTreeSet::new();
    let pending = rec("pending", "carol@example.com", 3600);
    for spelling in [
        "Carol@Example.com",
        "oidc:carol@example.com",
        "https://idp.example#CAROL@example.com",
    ] {
        let decision = decide(&facts(
            Some("carol@example.com"),
            Some("carol@example.com"),
            &none,
            mark(spelling, "D"),
            Some(&pending),
        ));
        assert_eq!(
            decision,
            Decision::SelfApprovalIgnored {
                approver: spelling.into()
            },
            "{spelling}"
        );
    }
}

#[test]
fn the_deployers_username_prefixes_are_dropped_before_comparing() {
    let none = BTreeSet::new();
    let pending = rec("pending", "carol@example.com", 3600);
    let prefixes = ["corp-".to_string()];
    let mut f = facts(
        Some("carol@example.com"),
        Some("carol@example.com"),
        &none,
        mark("corp-carol@example.com", "D"),
        Some(&pending),
    );
    assert!(
        matches!(decide(&f), Decision::Approved { .. }),
        "unknown prefix: another name"
    );
    f.username_prefixes = &prefixes;
    assert_eq!(
        decide(&f),
        Decision::SelfApprovalIgnored {
            approver: "corp-carol@example.com".into()
        }
    );
}

#[test]
fn several_approvals_are_collected_from_distinct_people() {
    let none = BTreeSet::new();
    let pending = rec("pending", "carol", 3600);
    let mut f = facts(Some("carol"), Some("carol"), &none, mark("bob", "D"), Some(&pending));
    f.required_approvals = 2;
    assert_eq!(
        decide(&f),
        Decision::PartlyApproved {
            approvers: vec!["bob".into()],
            required: 2
        }
    );
    let bob = ["bob".to_string()];
    f.collected = &bob;
    assert_eq!(
        decide(&f),
        Decision::PartlyApproved {
            approvers: vec!["bob".into()],
            required: 2
        },
        "the same person twice counts once"
    );
    f.approval = mark("Bob", "D");
    assert!(
        matches!(decide(&f), Decision::PartlyApproved { .. }),
        "nor under another spelling"
    );
    f.approval = mark("dave", "D");
    assert_eq!(
        decide(&f),
        Decision::Approved {
            approver: "bob, dave".into()
        }
    );
    f.approval = None;
    assert!(
        matches!(decide(&f), Decision::PartlyApproved { .. }),
        "one of two shows as such"
    );
}

#[test]
fn held_changes_are_looked_at_again_when_they_expire() {
    let now = Utc::now();
    let in_an_hour = Some(now + Duration::seconds(3600));
    let wait = recheck_after(&Decision::Awaiting, in_an_hour, now).expect("a timed recheck");
    assert!(wait >= std::time::Duration::from_secs(3600) && wait <= std::time::Duration::from_secs(3602));
    let past = recheck_after(&Decision::Awaiting, Some(now - Duration::seconds(5)), now).expect("due");
    assert!(past <= std::time::Duration::from_secs(1));
    let guard = recheck_after(&Decision::GuardMissing("x".into()), in_an_hour, now);
    assert_eq!(guard, Some(std::time::Duration::from_secs(15)));
    assert_eq!(recheck_after(&Decision::Expired, None, now), None);
}

fn off_or(inputs: &Inputs) -> Inputs {
    Inputs {
        floor: false,
        ..inputs.clone()
    }
}

#[test]
fn policies_add_to_the_floor_but_cannot_remove_it() {
    let spec = |yaml: &str| -> ApprovalPolicySpec { serde_norway::from_str(yaml).expect("spec") };
    let deletes = spec("rules: [{kinds: [Tenant], operations: [delete]}]\nrequiredApprovals: 2\n");
    let floor_only = Inputs {
        floor: true,
        ..Inputs::default()
    };
    let idp = |inputs: &Inputs, op| inputs.coverage("IdentityProvider", op, Baseline::Floor);
    assert!(idp(&floor_only, Operation::Create).is_some());
    assert!(idp(&floor_only, Operation::Update).is_some());
    assert!(
        idp(&floor_only, Operation::Delete).is_none(),
        "the floor covers what goes live"
    );
    assert!(
        floor_only
            .coverage("GroupMapping", Operation::Create, Baseline::PoliciesOnly)
            .is_none()
    );
    assert!(
        off_or(&floor_only)
            .coverage("ApprovalPolicy", Operation::Delete, Baseline::Always)
            .is_some()
    );
    let with_policy = Inputs {
        policy: EffectivePolicy::from_specs([&deletes]),
        floor: true,
        ..Inputs::default()
    };
    let held = idp(&with_policy, Operation::Create).expect("a policy not naming providers keeps the floor");
    assert_eq!(held.required_approvals, 2, "and asks as much as the policies do");
    let off = Inputs::default();
    assert!(idp(&off, Operation::Create).is_none());
}

#[test]
fn policies_fold_into_one() {
    let spec = |yaml: &str| -> ApprovalPolicySpec { serde_norway::from_str(yaml).expect("spec") };
    let a = spec("rules: [{kinds: [Tenant], operations: [delete]}]\nrequestTtlSeconds: 600\n");
    let b = spec("rules: [{kinds: [IdentityProvider, Tenant], operations: [create]}]\n");
    let p = EffectivePolicy::from_specs([&a, &b]).expect("policy");
    assert!(p.covers("Tenant", Operation::Delete));
    assert!(p.covers("Tenant", Operation::Create));
    assert!(p.covers("IdentityProvider", Operation::Create));
    assert!(!p.covers("Tenant", Operation::Update));
    assert_eq!(p.request_ttl_seconds, 600);
    assert_eq!(EffectivePolicy::from_specs([]), None);
}
