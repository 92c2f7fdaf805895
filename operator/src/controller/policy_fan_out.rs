//! Which kinds must look at their objects again when the two-person rule
//! changes, and at what pace.
//!
//! An ApprovalPolicy appearing, changing or going away (or its configuration
//! in force changing) can release or hold waiting changes, but only of the
//! kinds whose rules it changes: a policy about GroupMappings says nothing new
//! to ten thousand Tenants. Each change is compared kind by kind, and only
//! the kinds whose rules differ are told. They then look at their objects a
//! few at a time ([`paced`]), so a policy edit does not queue every object at
//! once in front of the changes people are waiting for.

use super::Context;
use countersign_reconcilers::approval::EffectivePolicy;
use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// Objects handed to a controller per step of a paced pass.
const PACE_BATCH: usize = 50;
/// The pause between steps: 50 objects every 100 ms, 500 a second.
const PACE_PAUSE: Duration = Duration::from_millis(100);

/// What the rule says about one kind, compared before and after a change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KindRules {
    /// Whether any policy is in force (the Approved condition shows).
    any_policy: bool,
    /// The kind's operations a second person must approve.
    covered: BTreeSet<&'static str>,
    /// TTL, GitOps accounts and approvals needed: they matter only to a kind
    /// that some rule (or the floor) covers.
    parameters: Option<(i64, BTreeSet<String>, u32)>,
    /// Policies in force whose objects are gone: while any is, no approval
    /// is honoured, for every kind.
    orphaned: BTreeSet<String>,
}

fn kind_rules(
    policy: Option<&EffectivePolicy>,
    kind: &str,
    floor_covers_kind: bool,
    orphaned: &BTreeSet<String>,
) -> KindRules {
    let covered: BTreeSet<&'static str> = policy
        .map(|p| p.covered().filter(|(k, _)| *k == kind).map(|(_, op)| op).collect())
        .unwrap_or_default();
    let parameters = if floor_covers_kind || !covered.is_empty() {
        policy.map(|p| (p.request_ttl_seconds, p.gitops_accounts.clone(), p.required_approvals))
    } else {
        None
    };
    KindRules {
        any_policy: policy.is_some(),
        covered,
        parameters,
        orphaned: orphaned.clone(),
    }
}

/// The kinds the approval floor covers (whatever the policies say).
fn floor_covers(kind: &str) -> bool {
    kind == countersign_reconcilers::identity_provider::KIND || kind == countersign_reconcilers::group_mapping::KIND
}

struct KindSignal {
    last: Option<KindRules>,
    tx: watch::Sender<u64>,
}

/// The per-kind signals "your rules changed".
#[derive(Default)]
pub struct PolicyFanOut {
    kinds: Mutex<HashMap<&'static str, KindSignal>>,
}

impl PolicyFanOut {
    /// A stream that fires when `kind`'s rules changed (changes that arrive
    /// while the controller is busy coalesce into one).
    pub fn subscribe(&self, kind: &'static str) -> impl Stream<Item = ()> + Send + 'static {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let signal = kinds.entry(kind).or_insert_with(|| KindSignal {
            last: None,
            tx: watch::channel(0u64).0,
        });
        futures::stream::unfold(signal.tx.subscribe(), |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }

    /// Compares every subscribed kind's rules with what they were and tells
    /// the kinds whose rules changed. The first call only records them.
    pub fn rules_may_have_changed(&self, ctx: &Context) {
        let (policy, orphaned) = super::effective_policy(ctx);
        let floor = ctx.rule.approval_floor;
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        for (kind, signal) in kinds.iter_mut() {
            let now = kind_rules(policy.as_ref(), kind, floor && floor_covers(kind), &orphaned);
            let changed = signal.last.as_ref().is_some_and(|last| *last != now);
            signal.last = Some(now);
            if changed {
                tracing::info!(
                    kind,
                    "the two-person rule for this kind changed: looking at its objects again"
                );
                signal.tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
}

/// Every object in `store` each time `trigger` fires, [`PACE_BATCH`] at a
/// time with [`PACE_PAUSE`] between batches.
pub fn paced<K>(
    store: Store<K>,
    trigger: impl Stream<Item = ()> + Send + 'static,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    trigger.flat_map(move |()| {
        let refs: Vec<ObjectRef<K>> = store.state().iter().map(|o| ObjectRef::from_obj(o.as_ref())).collect();
        let batches: Vec<Vec<ObjectRef<K>>> = refs.chunks(PACE_BATCH).map(<[_]>::to_vec).collect();
        futures::stream::iter(batches.into_iter().enumerate())
            .then(|(i, batch)| async move {
                if i > 0 {
                    tokio::time::sleep(PACE_PAUSE).await;
                }
                futures::stream::iter(batch)
            })
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use countersign_crds::ApprovalPolicySpec;

    fn policy(rules: serde_json::Value) -> Option<EffectivePolicy> {
        let spec: ApprovalPolicySpec = serde_json::from_value(serde_json::json!({ "rules": rules })).expect("spec");
        EffectivePolicy::from_specs([&spec])
    }

    #[tokio::test]
    async fn a_pass_hands_on_every_object_once_a_batch_at_a_time() {
        use countersign_crds::Tenant;
        use kube::runtime::watcher::Event;
        let mut writer = kube::runtime::reflector::store::Writer::<Tenant>::default();
        for i in 0..(PACE_BATCH * 2 + 10) {
            let t: Tenant = serde_json::from_value(serde_json::json!({
                "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "Tenant",
                "metadata": {"name": format!("t{i}")}, "spec": {"slug": format!("t{i}"), "name": "T"},
            }))
            .expect("fixture");
            writer.apply_watcher_event(&Event::Apply(t));
        }
        let started = std::time::Instant::now();
        let refs: Vec<_> = paced(writer.as_reader(), futures::stream::iter([()])).collect().await;
        let names: BTreeSet<String> = refs.iter().map(|r| r.name.clone()).collect();
        assert_eq!((refs.len(), names.len()), (PACE_BATCH * 2 + 10, PACE_BATCH * 2 + 10));
        assert!(
            started.elapsed() >= PACE_PAUSE * 2,
            "three batches, two pauses: {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_rule_about_one_kind_changes_nothing_for_another() {
        let none = BTreeSet::new();
        let mappings = policy(serde_json::json!([{"kinds": ["GroupMapping"], "operations": ["create"]}]));
        let mappings_and_deletes =
            policy(serde_json::json!([{"kinds": ["GroupMapping"], "operations": ["create", "delete"]}]));
        let tenants = |p: &Option<EffectivePolicy>| kind_rules(p.as_ref(), "Tenant", false, &none);
        let groups = |p: &Option<EffectivePolicy>| kind_rules(p.as_ref(), "GroupMapping", true, &none);
        assert_eq!(tenants(&mappings), tenants(&mappings_and_deletes));
        assert_ne!(groups(&mappings), groups(&mappings_and_deletes));
        // The first policy of all changes what every kind shows.
        assert_ne!(tenants(&None), tenants(&mappings));
        // An orphaned policy holds every approval.
        let orphaned = BTreeSet::from(["gone".to_string()]);
        assert_ne!(
            tenants(&mappings),
            kind_rules(mappings.as_ref(), "Tenant", false, &orphaned)
        );
    }
}
