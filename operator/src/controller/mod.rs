//! Controllers: one per kind, each a thin shell around its pipeline in
//! `countersign-reconcilers` that adds the finalizer, writes status, records
//! events on transitions and backs off with jitter.

pub mod approval_policy;
pub mod backoff;
pub mod fronting_link;
pub mod group_mapping;
pub mod identity_provider;
pub mod license_grant;
pub mod policy_fan_out;
pub mod row_changes;
pub mod shell;
pub mod status;
pub mod tenant;
pub mod watches;
pub mod webhook_subscription;

use crate::metrics::Metrics;
use backoff::Backoff;
use kube::Client;
use kube::runtime::events::Recorder;
use sqlx::PgPool;
use std::sync::Arc;

/// The finalizer every kind carries while it manages a row.
pub const FINALIZER: &str = "countersign.dev/cleanup";
/// The field manager for status writes.
pub const FIELD_MANAGER: &str = "countersign";

/// What every controller shares.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// API database pool.
    pub pool: PgPool,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Retry state per object.
    pub backoff: Backoff,
    /// The identity written to the audit log as actor, with the key its
    /// entries are chained under.
    pub actor: countersign_reconcilers::audit::Actor,
    /// How often a settled object is looked at again to detect drift in the
    /// database, which has no watch of its own.
    pub resync: std::time::Duration,
    /// Which objects have a change awaiting approval.
    pub pending: PendingApprovals,
    /// What each object's status says, counted per kind for the metrics.
    pub object_states: ObjectStates,
    /// Every ApprovalPolicy object, kept current by a watch (what is
    /// declared; what is enforced is [`Context::in_force`]).
    pub policies: kube::runtime::reflector::Store<countersign_crds::ApprovalPolicy>,
    /// The ApprovalPolicy configurations in force, loaded from the database
    /// before the controllers start and kept by the ApprovalPolicy controller.
    pub in_force: InForcePolicies,
    /// Bumped whenever the two-person rule may have changed (a policy
    /// object seen changing, a configuration in force changing); the
    /// fan-out then tells the kinds whose rules did.
    pub policy_changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Tells each kind's controller when its rules changed.
    pub policy_fan_out: policy_fan_out::PolicyFanOut,
    /// Bumped after an IdentityProvider's row is removed (its mappings' rows
    /// too, with Cascade): the GroupMapping controller looks at its objects
    /// again, so a mapping left without its provider says so even if the
    /// provider's delete event reached its watch before the removal committed
    /// or not at all.
    pub providers_removed: Arc<tokio::sync::watch::Sender<u64>>,
    /// The key secrets are sealed under.
    pub secret_key: Arc<countersign_reconcilers::secrets::SecretKey>,
    /// The one client for every outbound call, under the outbound policy.
    pub outbound: Option<countersign_reconcilers::outbound::OutboundClient>,
    /// What license grants are checked against.
    pub licensing: Arc<Licensing>,
    /// How whoever deploys the operator configured the two-person rule.
    pub rule: RuleConfig,
    /// How many reconciles may run at once across every controller (each
    /// holds at most one database connection at a time, so the pool is sized
    /// from it and a burst queues here instead of timing out on the pool).
    pub reconcile_slots: ReconcileSlots,
}

/// The bound on reconciles running at once, shared by every controller.
pub struct ReconcileSlots {
    semaphore: tokio::sync::Semaphore,
    limit: u16,
}

impl ReconcileSlots {
    /// At most `limit` (at least one) reconciles at once.
    pub fn new(limit: u16) -> Self {
        let limit = limit.max(1);
        Self {
            semaphore: tokio::sync::Semaphore::new(usize::from(limit)),
            limit,
        }
    }

    /// Waits for a free slot, counting the wait in the metrics; the slot is
    /// given back when the permit is dropped. (None only if the slots were
    /// closed, which they never are.)
    pub async fn acquire(&self, metrics: &Metrics) -> Option<tokio::sync::SemaphorePermit<'_>> {
        metrics.reconciles_waiting.inc();
        let permit = self.semaphore.acquire().await.ok();
        metrics.reconciles_waiting.dec();
        permit
    }
}

/// What the deployer of the operator decides about the two-person rule:
/// operator options, so nobody who only edits Countersign objects can change
/// them.
#[derive(Clone, Debug, Default)]
pub struct RuleConfig {
    /// The slug of the platform's own tenant: only its identity providers
    /// may map groups to platform-wide roles (PLATFORM_ADMIN,
    /// BILLING_OPERATOR). None: no tenant may.
    pub platform_tenant: Option<String>,
    /// The approval floor (reference 000: a new IdP federation "must be
    /// approved by a second PLATFORM_ADMIN before it becomes public"): a new
    /// or changed IdentityProvider and any GroupMapping granting a
    /// platform-wide role wait for a second person whatever the
    /// ApprovalPolicies say. On unless the deployer turns it off.
    pub approval_floor: bool,
    /// Username prefixes the API server adds (e.g. its
    /// `--oidc-username-prefix`), dropped before the operator compares people,
    /// on top of the fixed normalisation every part of the rule applies.
    pub username_prefixes: Vec<String>,
}

impl Context {
    /// What is in force changed: held changes of the kinds whose rules
    /// changed must be looked at again.
    pub fn policies_changed(&self) {
        self.policy_changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The configuration every controller runs with: no more reconciles at
    /// once than the shared bound allows.
    pub fn controller_config(&self) -> kube::runtime::controller::Config {
        kube::runtime::controller::Config::default().concurrency(self.reconcile_slots.limit)
    }

    /// When a settled object is looked at again: the resync period, spread by
    /// ±10% so objects that converged together do not all come back together.
    pub fn resync_after(&self) -> std::time::Duration {
        use rand::Rng;
        self.resync.mul_f64(rand::rng().random_range(0.9..=1.1))
    }
}

/// The ApprovalPolicy configurations in force, by policy name.
#[derive(Default)]
pub struct InForcePolicies(std::sync::RwLock<countersign_reconcilers::approval_policy::InForce>);

impl InForcePolicies {
    /// A copy of everything in force.
    pub fn snapshot(&self) -> countersign_reconcilers::approval_policy::InForce {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces everything (at start-up, from the database).
    pub fn replace(&self, all: countersign_reconcilers::approval_policy::InForce) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = all;
    }

    /// Sets (or, with None, removes) one policy's configuration in force.
    pub fn set(&self, name: &str, spec: Option<countersign_crds::ApprovalPolicySpec>) {
        let mut all = self.0.write().unwrap_or_else(|p| p.into_inner());
        match spec {
            Some(spec) => all.insert(name.to_string(), spec),
            None => all.remove(name),
        };
    }
}

/// What license grants are checked against (reference 000, ADR 0007).
#[derive(Clone, Debug, Default)]
pub struct Licensing {
    /// Trusted Ed25519 public keys (32 raw bytes each) by key ID.
    pub keyring: std::collections::BTreeMap<String, Vec<u8>>,
    /// The vendor every commercial chain must start with; None accepts none.
    pub vendor: Option<String>,
    /// The platform operator every commercial chain must end with; None accepts none.
    pub operator: Option<String>,
}

/// The objects whose status shows a digest awaiting approval, exported as
/// the `countersign_pending_approvals` gauge.
#[derive(Default)]
pub struct PendingApprovals(std::sync::Mutex<std::collections::HashSet<String>>);

impl PendingApprovals {
    /// Records whether `uid` waits for approval and updates the gauge.
    pub fn track(&self, uid: &str, pending: bool, metrics: &Metrics) {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if pending {
            set.insert(uid.to_string());
        } else {
            set.remove(uid);
        }
        metrics.pending_approvals.set(set.len() as i64);
    }
}

/// The rule in force now: what is enforced is what is in force (loaded
/// before the controllers start, see run::start), tightened by whatever the
/// objects declare and the ApprovalPolicy controller has not processed yet:
/// editing or deleting a policy object alone releases nothing, and a new
/// policy holds from the moment it is seen. Also the policies in force whose
/// objects are gone (a finalizer forced off).
pub fn effective_policy(
    ctx: &Context,
) -> (
    Option<countersign_reconcilers::approval::EffectivePolicy>,
    std::collections::BTreeSet<String>,
) {
    let in_force = ctx.in_force.snapshot();
    let declared: countersign_reconcilers::approval_policy::InForce = ctx
        .policies
        .state()
        .iter()
        .filter_map(|p| Some((p.metadata.name.clone()?, p.spec.clone())))
        .collect();
    let enforced = countersign_reconcilers::approval_policy::enforced(&in_force, &declared);
    let orphaned = in_force
        .keys()
        .filter(|name| {
            ctx.policies
                .get(&kube::runtime::reflector::ObjectRef::new(name))
                .is_none()
        })
        .cloned()
        .collect();
    (
        countersign_reconcilers::approval::EffectivePolicy::from_specs(&enforced),
        orphaned,
    )
}

/// Where an object stands, as the `countersign_objects` gauge counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectState {
    /// Ready=True: what is declared is live.
    Ready,
    /// Ready=False and Stalled=True: nothing changes until someone acts.
    Stalled,
    /// Ready=False, still being worked on or waiting.
    NotReady,
    /// Ready=Unknown or not set yet.
    Unknown,
}

impl ObjectState {
    /// The state `status` shows.
    pub fn of(status: &countersign_crds::ResourceStatus) -> Self {
        use countersign_crds::ConditionStatus;
        use countersign_crds::status::{READY, STALLED};
        let is = |type_, value| status.condition(type_).is_some_and(|c| c.status == value);
        if is(READY, ConditionStatus::True) {
            Self::Ready
        } else if is(STALLED, ConditionStatus::True) {
            Self::Stalled
        } else if is(READY, ConditionStatus::False) {
            Self::NotReady
        } else {
            Self::Unknown
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Stalled => "Stalled",
            Self::NotReady => "NotReady",
            Self::Unknown => "Unknown",
        }
    }
}

/// The state of every object the operator has reported on, by uid, exported
/// as `countersign_objects{kind, state}`.
#[derive(Default)]
pub struct ObjectStates(std::sync::Mutex<std::collections::HashMap<String, (&'static str, ObjectState)>>);

impl ObjectStates {
    /// Records `uid`'s state (None: the object is gone) and moves the gauges.
    pub fn track(&self, kind: &'static str, uid: &str, state: Option<ObjectState>, metrics: &Metrics) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let before = match state {
            Some(state) => all.insert(uid.to_string(), (kind, state)),
            None => all.remove(uid),
        };
        if before.map(|(_, s)| s) == state {
            return;
        }
        let gauge = |state: ObjectState| {
            metrics.objects.get_or_create(&crate::metrics::ObjectLabels {
                kind: kind.into(),
                state: state.label().into(),
            })
        };
        if let Some((_, old)) = before {
            gauge(old).dec();
        }
        if let Some(new) = state {
            gauge(new).inc();
        }
    }
}

/// Reads the ApprovalPolicies from the cache and, when the object carries an approval, checks
/// the admission guard: the inputs of the two-person rule for one reconcile.
pub async fn approval_inputs(
    ctx: &Context,
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<countersign_reconcilers::approval::Inputs, kube::Error> {
    use countersign_reconcilers::approval::{Guard, Inputs};
    let (policy, orphaned) = effective_policy(ctx);
    let approval_present = annotations.is_some_and(|a| a.contains_key(countersign_crds::annotations::APPROVED_BY));
    let floor = ctx.rule.approval_floor;
    let guard = if (policy.is_some() || floor) && approval_present {
        let guard = match crate::guard::check(&ctx.client).await {
            // The requester guard takes the policy objects as parameters: one
            // in force whose object was removed (its finalizer forced off)
            // no longer makes the API server check who deletes.
            Guard::Intact => orphaned.iter().next().map_or(Guard::Intact, |name| {
                Guard::Broken(format!(
                    "ApprovalPolicy {name} is in force but its object is gone; re-create it (its deletion was never approved)"
                ))
            }),
            broken => broken,
        };
        Some(guard)
    } else {
        None
    };
    Ok(Inputs {
        policy,
        guard,
        floor,
        username_prefixes: ctx.rule.username_prefixes.clone(),
    })
}

/// The watch configuration of a controller: every object, or only those
/// matching the operator's label selector.
pub fn watch_config(selector: Option<&str>) -> kube::runtime::watcher::Config {
    let config = kube::runtime::watcher::Config::default().any_semantic();
    match selector {
        Some(sel) => config.labels(sel),
        None => config,
    }
}
