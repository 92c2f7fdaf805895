//! Watching the objects: what the benchmark knows of each one, and waiting on it.

use crate::objects::{Kind, SHARD_LABEL, key_of};
use crate::util::{lock, next_item, progress};
use anyhow::bail;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the benchmark knows of one object, from its watch.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    /// Its kind.
    pub(crate) kind: Kind,
    /// Its shard.
    pub(crate) shard: usize,
    /// `metadata.uid`.
    pub(crate) uid: String,
    /// `metadata.generation`.
    pub(crate) generation: i64,
    /// Ready=True at the current generation (condition and `status.observedGeneration`).
    pub(crate) ready: bool,
    /// The Synced condition's status, if any.
    synced: Option<bool>,
    /// Ready's reason and message, for errors.
    pub(crate) why: String,
    /// When it last became ready.
    pub(crate) ready_since: Option<Instant>,
}

/// The objects as the watch last saw them, and the Synced=False flips seen.
#[derive(Default)]
pub(crate) struct TrackerState {
    /// By [`key_of`].
    pub(crate) objects: HashMap<String, Seen>,
    /// Transitions into Synced=False (or first seen so), by kind.
    synced_false: BTreeMap<Kind, u64>,
}

/// Watches every benchmark object (all shards) and wakes waiters on each event.
pub(crate) struct Tracker {
    /// The state.
    pub(crate) state: Mutex<TrackerState>,
    /// Bumped on every event.
    changed: tokio::sync::watch::Sender<u64>,
}

/// The tracker and its watch tasks (aborted on drop).
pub(crate) struct Tracking {
    /// The shared tracker.
    pub(crate) tracker: Arc<Tracker>,
    /// One watch per kind.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Tracking {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Tracker {
    /// Starts a watch per kind on `selector`.
    pub(crate) fn start(client: &Client, selector: &str, kinds: &[Kind]) -> Tracking {
        let tracker = Arc::new(Tracker {
            state: Mutex::new(TrackerState::default()),
            changed: tokio::sync::watch::channel(0).0,
        });
        let tasks = kinds
            .iter()
            .map(|&kind| {
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource());
                let config = watcher::Config::default().labels(selector);
                let tracker = tracker.clone();
                tokio::spawn(async move {
                    let mut stream = Box::pin(watcher(api, config).default_backoff());
                    while let Some(event) = next_item(&mut stream).await {
                        match event {
                            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                                tracker.observe(kind, &obj)
                            }
                            Ok(_) => {}
                            Err(e) => progress(format!("warning: {kind:?} watch: {e}")),
                        }
                    }
                })
            })
            .collect();
        Tracking { tracker, tasks }
    }

    /// Records what an event shows of an object.
    fn observe(&self, kind: Kind, obj: &DynamicObject) {
        let key = key_of(kind, obj.metadata.namespace.as_deref(), &obj.name_any());
        let generation = obj.metadata.generation.unwrap_or(0);
        let status = obj.data.get("status");
        let condition = |type_: &str| {
            status
                .and_then(|s| s.get("conditions"))
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(type_)))
        };
        let observed = status.and_then(|s| s.get("observedGeneration")).and_then(Value::as_i64);
        let ready_condition = condition("Ready");
        let ready = observed == Some(generation)
            && ready_condition.is_some_and(|c| {
                c.get("status").and_then(Value::as_str) == Some("True")
                    && c.get("observedGeneration")
                        .and_then(Value::as_i64)
                        .is_none_or(|g| g == generation)
            });
        let synced = condition("Synced")
            .and_then(|c| c.get("status").and_then(Value::as_str))
            .map(|s| s == "True");
        let why = ready_condition
            .map(|c| {
                format!(
                    "Ready={} {}: {}",
                    c.get("status").and_then(Value::as_str).unwrap_or("?"),
                    c.get("reason").and_then(Value::as_str).unwrap_or(""),
                    c.get("message").and_then(Value::as_str).unwrap_or("")
                )
            })
            .unwrap_or_else(|| "no Ready condition yet".into());
        let shard = obj.labels().get(SHARD_LABEL).and_then(|s| s.parse().ok()).unwrap_or(0);
        {
            let mut state = lock(&self.state);
            let previous = state.objects.get(&key).cloned();
            if synced == Some(false) && previous.as_ref().and_then(|p| p.synced) != Some(false) {
                *state.synced_false.entry(kind).or_insert(0) += 1;
            }
            let ready_since = match (&previous, ready) {
                (Some(p), true) if p.ready => p.ready_since,
                (_, true) => Some(Instant::now()),
                (_, false) => None,
            };
            state.objects.insert(
                key,
                Seen {
                    kind,
                    shard,
                    uid: obj.uid().unwrap_or_default(),
                    generation,
                    ready,
                    synced,
                    why,
                    ready_since,
                },
            );
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits until `check` returns Ok (it returns Err with a description of
    /// what is still missing, shown if `timeout` passes).
    pub(crate) async fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&TrackerState) -> Result<T, String>,
    ) -> anyhow::Result<T> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            let missing = match check(&lock(&self.state)) {
                Ok(v) => return Ok(v),
                Err(missing) => missing,
            };
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the watches stopped while waiting for {what}"),
                Err(_) => bail!("timed out after {timeout:?} waiting for {what}: {missing}"),
            }
        }
    }

    /// A copy of the Synced=False flips.
    pub(crate) fn synced_false(&self) -> BTreeMap<Kind, u64> {
        lock(&self.state).synced_false.clone()
    }
}
