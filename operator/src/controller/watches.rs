//! One watch per kind, shared by every controller that needs it.
//!
//! Several controllers look at the same kind: the Tenant controller owns
//! Tenants, and the IdentityProvider, WebhookSubscription and LicenseGrant
//! controllers react to a Tenant going live. With a watch each, every Tenant
//! write would be encoded and sent by the API server once per controller and a
//! restart would list every Tenant once per controller. A [`Feed`] keeps one
//! watch and one cache per kind and hands each change to its subscribers.
//!
//! The cache holds what the operator reads, not what the API server keeps for
//! itself: managed fields and the last-applied annotation are dropped as
//! objects arrive (they are most of a small object's size).

use countersign_crds::{
    ApprovalPolicy, FrontingLink, GroupMapping, IdentityProvider, LicenseGrant, Tenant, WebhookSubscription,
};
use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// The annotation `kubectl apply` keeps a copy of the whole object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Which changes of an object reach a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changes {
    /// Every change, status included: a controller that reacts to a related
    /// object (a Tenant going live releases its waiting providers).
    All,
    /// What the object's own controller acts on: its spec (generation),
    /// labels, annotations (approvals) and deletion, and any object that does
    /// not carry the operator's finalizer (new, or stripped of it). Its own
    /// status writes, and its own adding of the finalizer, do not come back
    /// to it as another reconcile.
    Declared,
}

/// A subscriber's end: a stream of changed objects.
pub type Subscription<K> = mpsc::UnboundedReceiver<Arc<K>>;

struct Subscriber<K: Resource> {
    tx: mpsc::UnboundedSender<Arc<K>>,
    /// For [`Changes::Declared`]: the hash of what was last handed on, per object.
    seen: Option<HashMap<ObjectRef<K>, u64>>,
}

/// One watch of a kind, its cache, and the controllers it feeds.
pub struct Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    source: BoxStream<'static, watcher::Result<watcher::Event<K>>>,
    writer: Writer<K>,
    subscribers: Vec<Subscriber<K>>,
}

impl<K> Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// A feed of the objects `config` selects.
    pub fn new(api: Api<K>, config: watcher::Config) -> Self {
        Self::from_source(watcher(api, config).boxed())
    }

    fn from_source(source: BoxStream<'static, watcher::Result<watcher::Event<K>>>) -> Self {
        Self {
            source,
            writer: Writer::default(),
            subscribers: Vec::new(),
        }
    }

    /// The cache, kept current by the watch once [`Feed::run`] runs.
    pub fn store(&self) -> Store<K> {
        self.writer.as_reader()
    }

    /// A new subscriber that receives `changes`. Subscribe before [`Feed::run`].
    pub fn subscribe(&mut self, changes: Changes) -> Subscription<K> {
        let (tx, rx) = mpsc::unbounded();
        self.subscribers.push(Subscriber {
            tx,
            seen: (changes == Changes::Declared).then(HashMap::new),
        });
        rx
    }

    /// Watches until `shutdown` resolves, keeping the cache and handing every
    /// change to the subscribers. Dropping the subscribers' senders at the end
    /// ends their streams.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let kind = K::kind(&()).to_string();
        let source = std::mem::replace(&mut self.source, futures::stream::empty().boxed());
        let stream = source.default_backoff().modify(trim);
        tokio::pin!(stream);
        tokio::pin!(shutdown);
        loop {
            let event = tokio::select! {
                _ = &mut shutdown => break,
                event = stream.next() => event,
            };
            match event {
                Some(Ok(event)) => self.apply(event),
                Some(Err(e)) => tracing::warn!(%kind, error = %e, "watch error; retrying with back-off"),
                None => break,
            }
        }
    }

    fn apply(&mut self, event: watcher::Event<K>) {
        self.writer.apply_watcher_event(&event);
        let store = self.writer.as_reader();
        match event {
            watcher::Event::Apply(obj) => {
                if let Some(cached) = store.get(&ObjectRef::from_obj(&obj)) {
                    self.dispatch(&cached, false);
                }
            }
            watcher::Event::Delete(obj) => self.dispatch(&Arc::new(obj), true),
            // After a (re)list every object is news to a subscriber that has
            // not seen it; [`Changes::Declared`] drops those it has.
            watcher::Event::InitDone => {
                for obj in store.state() {
                    self.dispatch(&obj, false);
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    fn dispatch(&mut self, obj: &Arc<K>, deleted: bool) {
        let key = ObjectRef::from_obj(obj.as_ref());
        // Computed once per change, not once per subscriber.
        let hash = declared_hash(obj.as_ref());
        let needs_finalizer = needs_finalizer(obj.as_ref());
        for subscriber in &mut self.subscribers {
            if let Some(seen) = &mut subscriber.seen {
                if deleted {
                    seen.remove(&key);
                } else if seen.insert(key.clone(), hash) == Some(hash) && !needs_finalizer {
                    continue;
                }
            }
            // A receiver that is gone belongs to a controller that stopped.
            let _ = subscriber.tx.unbounded_send(obj.clone());
        }
    }
}

/// The feeds of every kind the controllers watch: one watch per kind.
pub struct Feeds {
    /// Tenants (the operator's selector applies).
    pub tenants: Feed<Tenant>,
    /// IdentityProviders.
    pub identity_providers: Feed<IdentityProvider>,
    /// GroupMappings.
    pub group_mappings: Feed<GroupMapping>,
    /// WebhookSubscriptions.
    pub webhook_subscriptions: Feed<WebhookSubscription>,
    /// FrontingLinks.
    pub fronting_links: Feed<FrontingLink>,
    /// LicenseGrants.
    pub license_grants: Feed<LicenseGrant>,
    /// Every ApprovalPolicy, whatever the selector: a shard must enforce the
    /// same rule as every other.
    pub approval_policies: Feed<ApprovalPolicy>,
    /// Every Secret's metadata (referenced client and signing secrets).
    pub secrets: Feed<PartialObjectMeta<Secret>>,
    /// Managed rows changed in the database behind the operator's back.
    pub row_changes: super::row_changes::RowChanges,
}

impl Feeds {
    /// The feeds of the objects `selector` picks (all without one).
    pub fn new(client: &kube::Client, selector: Option<&str>) -> Self {
        let config = super::watch_config(selector);
        Self {
            tenants: Feed::new(Api::all(client.clone()), config.clone()),
            identity_providers: Feed::new(Api::all(client.clone()), config.clone()),
            group_mappings: Feed::new(Api::all(client.clone()), config.clone()),
            webhook_subscriptions: Feed::new(Api::all(client.clone()), config.clone()),
            fronting_links: Feed::new(Api::all(client.clone()), config.clone()),
            license_grants: Feed::new(Api::all(client.clone()), config),
            approval_policies: Feed::new(Api::all(client.clone()), watcher::Config::default().any_semantic()),
            // Metadata only (an `Api` of `PartialObjectMeta` asks for nothing
            // else): the operator learns that a Secret changed without the API
            // server sending, or the cache holding, any Secret's data.
            secrets: Feed::new(Api::all(client.clone()), watcher::Config::default().any_semantic()),
            row_changes: Default::default(),
        }
    }

    /// Runs every feed until `shutdown` resolves for it.
    pub async fn run<F: Future<Output = ()>>(
        self,
        pool: sqlx::PgPool,
        metrics: Arc<crate::metrics::Metrics>,
        shutdown: impl Fn() -> F,
    ) {
        futures::join!(
            self.row_changes.run(pool, metrics, shutdown()),
            self.tenants.run(shutdown()),
            self.identity_providers.run(shutdown()),
            self.group_mappings.run(shutdown()),
            self.webhook_subscriptions.run(shutdown()),
            self.fronting_links.run(shutdown()),
            self.license_grants.run(shutdown()),
            self.approval_policies.run(shutdown()),
            self.secrets.run(shutdown()),
        );
    }
}

/// The hash of what an object's own controller acts on (see
/// [`Changes::Declared`]). Finalizers are left out: the operator adding its
/// own is not news, and an object without it is always handed on
/// ([`needs_finalizer`]).
fn declared_hash<K: Resource>(obj: &K) -> u64 {
    let meta = obj.meta();
    let mut hasher = DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .hash(&mut hasher);
    hasher.finish()
}

/// Whether the object lacks the operator's finalizer and is not being
/// deleted: its controller must look at it (a new object, or one whose
/// finalizer someone removed).
fn needs_finalizer<K: Resource>(obj: &K) -> bool {
    let meta = obj.meta();
    meta.deletion_timestamp.is_none()
        && !meta
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == super::FINALIZER))
}

/// Drops what the operator never reads from a cached object.
fn trim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(annotations) = obj.meta_mut().annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use countersign_crds::Tenant;
    use kube::ResourceExt;

    fn tenant(generation: i64) -> Tenant {
        let mut t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "generation": generation,
                "annotations": {LAST_APPLIED: "{}", "keep": "me"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"slug": "acme", "name": "Acme"},
        }))
        .expect("fixture parses");
        trim(&mut t);
        t
    }

    #[test]
    fn the_cache_keeps_no_managed_fields_and_no_last_applied_copy() {
        let t = tenant(1);
        assert!(t.metadata.managed_fields.is_none());
        assert_eq!(t.annotations().len(), 1);
        assert_eq!(t.annotations().get("keep").map(String::as_str), Some("me"));
    }

    #[test]
    fn a_status_write_is_not_a_declared_change_but_a_spec_or_annotation_change_is() {
        let before = tenant(1);
        let mut status_written = before.clone();
        status_written.status = Some(Default::default());
        status_written.metadata.resource_version = Some("2".into());
        assert_eq!(declared_hash(&before), declared_hash(&status_written));
        assert_ne!(declared_hash(&before), declared_hash(&tenant(2)));
        let mut annotated = before.clone();
        annotated
            .annotations_mut()
            .insert("countersign.dev/approved-by".into(), "bob".into());
        assert_ne!(declared_hash(&before), declared_hash(&annotated));
        // The operator adding its finalizer is not news; an object without
        // it always is.
        let mut finalized = before.clone();
        finalized.finalizers_mut().push(crate::controller::FINALIZER.into());
        assert_eq!(declared_hash(&before), declared_hash(&finalized));
        assert!(needs_finalizer(&before) && !needs_finalizer(&finalized));
    }
}
