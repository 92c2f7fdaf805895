//! Starting and stopping the operator.

use crate::Error;
use crate::controller::watches::{Changes, Feeds};
use crate::controller::{self, Context, FIELD_MANAGER};
use crate::health::{self, Readiness};
use crate::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube_lease_manager::LeaseManagerBuilder;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long shutdown waits for each task before aborting it.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Address of the health and metrics server.
    pub health_addr: SocketAddr,
    /// Only reconcile objects matching this label selector (sharding, tests).
    pub selector: Option<String>,
    /// The identity recorded as actor in the audit log and as event reporter.
    pub actor: String,
    /// This instance's name (pod name), for events.
    pub instance: Option<String>,
    /// How often settled objects are re-checked against the database for drift.
    pub resync: std::time::Duration,
    /// Run controllers only while holding this lease; None runs them at once.
    pub leader_election: Option<LeaderElection>,
    /// The key secrets are sealed under (from `--encryption-key-secret`); the
    /// audit chain's key is derived from it, so the operator cannot write
    /// without it.
    pub secret_key: Arc<countersign_reconcilers::secrets::SecretKey>,
    /// Where outbound calls may go.
    pub outbound: countersign_reconcilers::outbound::OutboundPolicy,
    /// The license keyring and the ends of the commercial chain.
    pub licensing: controller::Licensing,
    /// The deployer's configuration of the two-person rule.
    pub rule: controller::RuleConfig,
    /// Where the audit chain's head is anchored; None keeps no anchor, and
    /// then a truncated log goes unnoticed.
    pub audit_anchor: Option<crate::audit_anchor::AnchorTarget>,
    /// How many reconciles may run at once across every controller.
    pub max_concurrent_reconciles: u16,
    /// Connections in the operator's own database pool (at least
    /// `max_concurrent_reconciles` + 2: the row-change listener and the
    /// audit anchor hold one each).
    pub database_pool_size: u32,
}

/// The default of `--max-concurrent-reconciles`.
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 32;

/// Where and as whom to take part in leader election.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This instance's unique identity (e.g. the pod name).
    pub identity: String,
    /// How long a lease stays valid without renewal, in seconds.
    pub duration_seconds: u64,
}

/// A started operator.
pub struct Running {
    /// Where /healthz, /readyz and /metrics are served.
    pub health_addr: SocketAddr,
    stop: Arc<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops the controllers and the server and waits for them, at most
    /// [`SHUTDOWN_GRACE`] each (an idle keep-alive client must not hold the
    /// operator up).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for mut t in self.tasks {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut t).await.is_err() {
                t.abort();
            }
        }
    }

    /// Waits until the operator stops by itself (or forever).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Asks the operator to stop, without waiting.
    pub fn trigger_shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Serves until `shutdown` completes (then Ok), or until the operator
    /// stops by itself: it lost its leader lease, or a watch it cannot work
    /// without ended. Then it returns an error, so the process exits non-zero
    /// and Kubernetes restarts the pod, which campaigns for the lease again,
    /// instead of leaving a replica up that answers /healthz but does no work.
    pub async fn serve_until(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        let mut stopped = self.stop.subscribe();
        let outcome = tokio::select! {
            _ = shutdown => {
                tracing::info!("shutting down");
                Ok(())
            }
            _ = stopped.wait_for(|stop| *stop) => {
                tracing::error!("the controllers stopped by themselves; exiting so the pod is restarted");
                Err(Error::Stopped)
            }
        };
        self.shutdown().await;
        outcome
    }
}

/// Refuses to start unless every CRD is established.
pub async fn check_crds(client: &Client) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in countersign_crds::all_crds() {
        let name = crd.metadata.name.unwrap_or_default();
        let established = api
            .get_opt(&name)
            .await?
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        if !established {
            return Err(Error::Startup(format!(
                "CRD {name} is not installed or not established; install the chart (or kubectl apply -k kustomize/base) first"
            )));
        }
    }
    Ok(())
}

/// Checks the preconditions and starts the health server and, once this
/// instance leads (or at once without leader election), the controllers.
pub async fn start(client: Client, pool: PgPool, options: RunOptions) -> Result<Running, Error> {
    countersign_reconcilers::db::check_schema(&pool).await?;
    // The operator's writes go through a pool of its own, marked so that the
    // database's change notifications do not echo them back.
    let pool = countersign_reconcilers::db::operator_pool(&pool, options.database_pool_size);
    check_crds(&client).await?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(Readiness::default());
    let (stop, stopped) = watch::channel(false);
    let stop = Arc::new(stop);
    let wait_stop = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let (health_addr, server) = health::serve(options.health_addr, ready.clone(), metrics.clone(), wait_stop())
        .await
        .map_err(|e| Error::Startup(format!("cannot bind health server on {}: {e}", options.health_addr)))?;
    let lease = match &options.leader_election {
        Some(le) => Some(
            LeaseManagerBuilder::new(client.clone(), &le.lease_name)
                .with_namespace(&le.namespace)
                .with_identity(&le.identity)
                .with_duration(le.duration_seconds)
                .with_grace(le.duration_seconds.div_ceil(3).max(1))
                .with_field_manager(format!("{FIELD_MANAGER}-leader"))
                .build()
                .await
                .map_err(|e| Error::Startup(format!("leader election: {e}")))?,
        ),
        None => None,
    };
    // One watch per kind, shared by the controllers; they run only while
    // this instance leads, so a standby holds no cache. ApprovalPolicies are
    // read from their cache; every change to one is also a reason to look at
    // waiting changes again.
    let mut feeds = Feeds::new(&client, options.selector.as_deref());
    let policies = feeds.approval_policies.store();
    let policy_events = feeds.approval_policies.subscribe(Changes::Declared);
    // Bumped whenever the rule may have changed; the fan-out tells the kinds
    // whose rules did, and changes that arrive together coalesce.
    let (policy_tx, policy_rx) = watch::channel(0u64);
    let policy_tx = Arc::new(policy_tx);
    let outbound = countersign_reconcilers::outbound::OutboundClient::new(options.outbound.clone())
        .map_err(|e| Error::Startup(format!("outbound policy: {e}")))?;
    let ctx = Arc::new(Context {
        client: client.clone(),
        pool,
        recorder: Recorder::new(
            client,
            Reporter {
                controller: options.actor.clone(),
                instance: options.instance.clone(),
            },
        ),
        metrics: metrics.clone(),
        backoff: Default::default(),
        actor: countersign_reconcilers::audit::Actor::new(
            options.actor.clone(),
            options.secret_key.audit_chain_key().clone(),
        ),
        resync: options.resync,
        pending: Default::default(),
        object_states: Default::default(),
        policies,
        in_force: Default::default(),
        policy_changes: policy_tx,
        policy_fan_out: Default::default(),
        providers_removed: Arc::new(watch::channel(0u64).0),
        secret_key: options.secret_key.clone(),
        outbound: Some(outbound),
        licensing: Arc::new(options.licensing.clone()),
        rule: options.rule.clone(),
        reconcile_slots: controller::ReconcileSlots::new(options.max_concurrent_reconciles),
    });
    let server_task = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "health server failed");
        }
    });
    let anchor = options.audit_anchor.clone();
    let controllers = {
        let stop = stop.clone();
        let wait_stop = wait_stop.clone();
        async move {
            // Without leader election this instance leads from the start.
            let mut leading = match lease {
                None => None,
                Some(manager) => {
                    let (mut leading, lease_task) = manager.watch().await;
                    tokio::select! {
                        _ = wait_stop() => return,
                        won = leading.wait_for(|l| *l) => if won.is_err() { return },
                    }
                    Some((leading, lease_task))
                }
            };
            let rules_changed = |kind| ctx.policy_fan_out.subscribe(kind);
            let controllers = futures::future::join_all([
                controller::tenant::run(
                    ctx.clone(),
                    &mut feeds,
                    rules_changed(countersign_reconcilers::tenant::KIND),
                    wait_stop(),
                ),
                controller::identity_provider::run(
                    ctx.clone(),
                    &mut feeds,
                    rules_changed(countersign_reconcilers::identity_provider::KIND),
                    wait_stop(),
                ),
                controller::group_mapping::run(
                    ctx.clone(),
                    &mut feeds,
                    rules_changed(countersign_reconcilers::group_mapping::KIND),
                    wait_stop(),
                ),
                controller::webhook_subscription::run(
                    ctx.clone(),
                    &mut feeds,
                    rules_changed(countersign_reconcilers::webhook_subscription::KIND),
                    wait_stop(),
                ),
                controller::fronting_link::run(
                    ctx.clone(),
                    &mut feeds,
                    rules_changed(countersign_reconcilers::fronting_link::KIND),
                    wait_stop(),
                ),
                controller::license_grant::run(
                    ctx.clone(),
                    &mut feeds,
                    rules_changed(countersign_reconcilers::license_grant::KIND),
                    wait_stop(),
                ),
                controller::approval_policy::run(ctx.clone(), &mut feeds, wait_stop()),
            ]);
            let policy_notifier = {
                let policy_tx = ctx.policy_changes.clone();
                policy_events.for_each(move |_| {
                    policy_tx.send_modify(|n| *n = n.wrapping_add(1));
                    futures::future::ready(())
                })
            };
            let start_controllers = async {
                // Until the first list of ApprovalPolicies has arrived an
                // empty cache would read as "no policy" and let changes
                // through unapproved.
                if ctx.policies.wait_until_ready().await.is_err() {
                    tracing::error!("the ApprovalPolicy watch stopped before its first list");
                    let _ = stop.send(true);
                    return;
                }
                // What is in force lives in the database; until it is read, no
                // controller may decide anything.
                loop {
                    match countersign_reconcilers::approval_policy::load(&ctx.pool).await {
                        Ok(all) => {
                            ctx.in_force.replace(all);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the ApprovalPolicies in force; retrying");
                            tokio::select! {
                                _ = wait_stop() => return,
                                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                            }
                        }
                    }
                }
                // From here on, each change of what is in force or declared
                // is compared with this, kind by kind.
                ctx.policy_fan_out.rules_may_have_changed(&ctx);
                let fan_out = async {
                    let mut changes = policy_rx.clone();
                    tokio::select! {
                        _ = async {
                            while changes.changed().await.is_ok() {
                                ctx.policy_fan_out.rules_may_have_changed(&ctx);
                            }
                        } => {}
                        _ = wait_stop() => {}
                    }
                };
                metrics.leader.set(1);
                // Each controller's first list looks at every object.
                metrics.mark_full_resync();
                tracing::info!("leading: starting controllers");
                futures::join!(controllers, fan_out, async {
                    // Only the leader writes entries, so only it moves their anchor.
                    if let Some(target) = anchor {
                        crate::audit_anchor::keep(
                            ctx.client.clone(),
                            ctx.pool.clone(),
                            ctx.actor.key().clone(),
                            target,
                            wait_stop(),
                        )
                        .await;
                    }
                });
            };
            let lost = async {
                match &mut leading {
                    Some((rx, _)) => {
                        let _ = rx.wait_for(|l| !*l).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let controller = async {
                futures::join!(
                    feeds.run(ctx.pool.clone(), metrics.clone(), wait_stop.clone()),
                    policy_notifier,
                    start_controllers
                );
            };
            tokio::pin!(controller);
            tokio::select! {
                _ = &mut controller => {}
                _ = lost => {
                    tracing::error!("lost the leader lease: stopping so a new leader takes over");
                    let _ = stop.send(true);
                    controller.await;
                }
            }
            metrics.leader.set(0);
            // Dropping the receiver makes the lease task release the lease.
            if let Some((rx, lease_task)) = leading {
                drop(rx);
                let _ = lease_task.await;
            }
        }
    };
    let tasks = vec![server_task, tokio::spawn(controllers)];
    ready.set(true);
    tracing::info!(%health_addr, "countersign operator started");
    Ok(Running {
        health_addr,
        stop,
        tasks,
    })
}

/// Runs until SIGINT/SIGTERM, or fails when the operator stops by itself
/// (see [`Running::serve_until`]).
pub async fn run(client: Client, pool: PgPool, options: RunOptions) -> Result<(), Error> {
    start(client, pool, options).await?.serve_until(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
