//! Changes made to managed rows behind the operator's back, heard as they
//! happen.
//!
//! The database tells the operator of every insert, update and delete of a
//! managed row that the operator did not make itself (`LISTEN` on the channel
//! the schema's triggers notify; see migration 0009). Each notice names a
//! table and a row; the owning object is found through `managed_objects` and
//! reconciled alone, which corrects the drift or reports it. Nothing is read
//! for rows that did not change.
//!
//! Notices sent while the listening connection is down are lost, so after
//! every reconnection each controller looks at all its objects once.

use crate::metrics::Metrics;
use futures::StreamExt;
use futures::channel::mpsc;
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The channel the schema's triggers notify.
pub const CHANNEL: &str = "countersign_row_changes";

/// The first wait before reconnecting; it doubles up to [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// The longest wait between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// What a trigger sends: the table, the operation, and the row (or, for a
/// `managed_objects` row, the object it names).
#[derive(Debug, serde::Deserialize)]
struct Notice {
    table: String,
    id: Option<uuid::Uuid>,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

/// The kind whose objects manage the rows of `table`.
fn kind_of_table(table: &str) -> Option<&'static str> {
    Some(match table {
        "tenants" => countersign_reconcilers::tenant::KIND,
        "identity_providers" => countersign_reconcilers::identity_provider::KIND,
        "group_mappings" => countersign_reconcilers::group_mapping::KIND,
        "webhook_subscriptions" => countersign_reconcilers::webhook_subscription::KIND,
        "fronting_links" => countersign_reconcilers::fronting_link::KIND,
        "license_grants" => countersign_reconcilers::license_grant::KIND,
        _ => return None,
    })
}

/// Where a notice leads.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// Look up the owner of this row of this kind.
    Row(&'static str, uuid::Uuid),
    /// This object of this kind.
    Object(String, String, String),
    /// Every object of this kind (a platform resource changed: any link may
    /// point at it, or wait for it).
    All(&'static str),
}

fn route(notice: &Notice) -> Option<Route> {
    match notice.table.as_str() {
        "managed_objects" => Some(Route::Object(
            notice.kind.clone()?,
            notice.namespace.clone().unwrap_or_default(),
            notice.name.clone()?,
        )),
        "platform_resources" => Some(Route::All(countersign_reconcilers::fronting_link::KIND)),
        table => Some(Route::Row(kind_of_table(table)?, notice.id?)),
    }
}

/// One kind's end: the objects whose rows changed, and "look at everything".
struct KindRoute {
    objects: mpsc::UnboundedSender<(String, String)>,
    all: watch::Sender<u64>,
}

/// A kind's subscription to row changes.
pub struct KindChanges<K: Resource<DynamicType = ()>> {
    /// Objects whose rows changed.
    pub objects: futures::stream::BoxStream<'static, ObjectRef<K>>,
    /// Fires when every object of the kind must be looked at again.
    pub everything: futures::stream::BoxStream<'static, ()>,
}

/// The row-change listener and the kinds it feeds.
#[derive(Default)]
pub struct RowChanges {
    routes: HashMap<&'static str, KindRoute>,
}

impl RowChanges {
    /// Subscribes `kind`'s controller. Subscribe before [`RowChanges::run`].
    pub fn subscribe<K>(&mut self, kind: &'static str) -> KindChanges<K>
    where
        K: Resource<DynamicType = ()> + 'static,
    {
        let (tx, rx) = mpsc::unbounded::<(String, String)>();
        let (all, all_rx) = watch::channel(0u64);
        self.routes.insert(kind, KindRoute { objects: tx, all });
        let objects = rx
            .map(|(namespace, name)| {
                let object = ObjectRef::<K>::new(&name);
                if namespace.is_empty() {
                    object
                } else {
                    object.within(&namespace)
                }
            })
            .boxed();
        let everything = futures::stream::unfold(all_rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
        .boxed();
        KindChanges { objects, everything }
    }

    /// Listens until `shutdown` resolves, reconnecting with back-off.
    pub async fn run(self, pool: PgPool, metrics: Arc<Metrics>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut delay = FIRST_RECONNECT_DELAY;
        let mut first_attempt = true;
        loop {
            let connected = tokio::select! {
                _ = &mut shutdown => return,
                connected = listen(&pool) => connected,
            };
            match connected {
                Ok(mut listener) => {
                    metrics.row_change_listener_connected.set(1);
                    // The controllers' first list looks at everything; after
                    // that, whatever was edited while nobody listened is only
                    // found by looking at everything again.
                    if !first_attempt {
                        tracing::info!("row-change listener reconnected: looking at every object again");
                        self.everything_again(&metrics);
                    }
                    delay = FIRST_RECONNECT_DELAY;
                    loop {
                        let received = tokio::select! {
                            _ = &mut shutdown => return,
                            received = listener.try_recv() => received,
                        };
                        match received {
                            Ok(Some(notification)) => self.deliver(&pool, notification.payload()).await,
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "row-change listener failed");
                                break;
                            }
                        }
                    }
                    metrics.row_change_listener_connected.set(0);
                    tracing::warn!("row-change listener lost its connection; reconnecting");
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for row changes; retrying"),
            }
            first_attempt = false;
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(super::backoff::jittered(delay)) => {}
            }
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        }
    }

    fn everything_again(&self, metrics: &Metrics) {
        for route in self.routes.values() {
            route.all.send_modify(|n| *n = n.wrapping_add(1));
        }
        metrics.mark_full_resync();
    }

    async fn deliver(&self, pool: &PgPool, payload: &str) {
        let notice: Notice = match serde_json::from_str(payload) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable row-change notice");
                return;
            }
        };
        let (kind, namespace, name) = match route(&notice) {
            None => return,
            Some(Route::All(kind)) => {
                if let Some(r) = self.routes.get(kind) {
                    r.all.send_modify(|n| *n = n.wrapping_add(1));
                }
                return;
            }
            Some(Route::Object(kind, namespace, name)) => (kind, namespace, name),
            Some(Route::Row(kind, row_id)) => match owner(pool, kind, row_id).await {
                Ok(Some((namespace, name))) => (kind.to_string(), namespace, name),
                // A row no object manages: made and kept by people.
                Ok(None) => return,
                Err(e) => {
                    // The periodic resync still finds it.
                    tracing::warn!(error = %e, kind, "cannot look up the owner of a changed row");
                    return;
                }
            },
        };
        tracing::debug!(kind, namespace, name, "managed row changed behind the operator");
        if let Some(r) = self.routes.get(kind.as_str()) {
            let _ = r.objects.unbounded_send((namespace, name));
        }
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection is noticed by the loop above, which re-listens and
    // looks at everything; sqlx reconnecting by itself would hide the gap.
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// The object that manages row `row_id` of `kind`, if any.
async fn owner(pool: &PgPool, kind: &str, row_id: uuid::Uuid) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT object_ns, object_name FROM managed_objects WHERE kind = $1 AND row_id = $2")
        .bind(kind)
        .bind(row_id)
        .fetch_optional(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(json: serde_json::Value) -> Notice {
        serde_json::from_value(json).expect("notice parses")
    }

    #[test]
    fn a_notice_leads_to_its_row_its_object_or_every_link() {
        let id = uuid::Uuid::new_v4();
        assert_eq!(
            route(&notice(
                serde_json::json!({"table": "tenants", "op": "UPDATE", "id": id})
            )),
            Some(Route::Row("Tenant", id))
        );
        assert_eq!(
            route(&notice(serde_json::json!({"table": "managed_objects", "op": "DELETE",
                "kind": "GroupMapping", "namespace": "team-a", "name": "admins"}))),
            Some(Route::Object("GroupMapping".into(), "team-a".into(), "admins".into()))
        );
        assert_eq!(
            route(&notice(
                serde_json::json!({"table": "platform_resources", "op": "DELETE", "id": id})
            )),
            Some(Route::All("FrontingLink"))
        );
        assert_eq!(
            route(&notice(
                serde_json::json!({"table": "audit_log", "op": "INSERT", "id": id})
            )),
            None
        );
    }
}
