//! The phases of a run: the bare baseline, convergence, idle, single changes, drift, restart and ownership.

use crate::args::Args;
use crate::metrics::{BenchWrites, RssMax};
use crate::objects::{FIELD_MANAGER, Kind, Planned, create};
use crate::operator::Fleet;
use crate::tracker::Tracker;
use crate::util::{cpu_between, for_each_concurrent, lock, progress, stack_cpu};
use crate::window::{Quiet, Window, snapshot, wait_quiet};
use crate::world::World;
use anyhow::{Context as _, anyhow};
use countersign_crds::status::ResourceStatus;
use countersign_operator::controller::shell::add_finalizer_patch;
use countersign_reconcilers::{conditions, report};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a PostgreSQL 15 backend may hold its statistics before they reach
/// `pg_stat_database`: an idle backend that flushed less than a second ago
/// waits `PGSTAT_IDLE_INTERVAL` (10 s). Counters are read this long after the
/// last activity of a phase.
pub(crate) const PG_STATS_FLUSH: Duration = Duration::from_secs(11);

/// How long one single change may take before the benchmark gives up.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the drift check reads the edited row.
const DRIFT_POLL: Duration = Duration::from_millis(5);

/// The bare client: for every object the three writes a reconcile cannot do
/// without (create, add the finalizer, write the Ready status), at
/// `concurrency`, with no operator running. `client` creates, as the user
/// (Argo CD) does in the operator phase. `operator` makes the operator's two
/// writes as the operator makes them: with its identity (so the API server
/// authenticates and authorizes them alike), the same JSON patch for the
/// finalizer and the same server-side apply of the status a live object
/// shows ([`live_status`]). Returns how long it took.
pub(crate) async fn bare_baseline(
    client: &Client,
    operator: &Client,
    objects: Vec<Planned>,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let writes = Arc::new(BenchWrites::default());
    let started = Instant::now();
    let (client, operator) = (client.clone(), operator.clone());
    for_each_concurrent(objects, concurrency, move |p| {
        let (client, operator, writes) = (client.clone(), operator.clone(), writes.clone());
        async move {
            let created = create(&client, &p, &writes).await?;
            let api = p.api(&operator);
            let name = p.obj.name_any();
            let add_finalizer = add_finalizer_patch(created.metadata.finalizers.as_deref())?;
            api.patch(&name, &PatchParams::default(), &Patch::<()>::Json(add_finalizer))
                .await
                .with_context(|| format!("adding the finalizer to {}", p.key()))?;
            let status = json!({
                "apiVersion": p.obj.types.as_ref().map(|t| t.api_version.clone()),
                "kind": p.obj.types.as_ref().map(|t| t.kind.clone()),
                "status": live_status(&p, created.metadata.generation),
            });
            api.patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&status),
            )
            .await
            .with_context(|| format!("applying the status of {}", p.key()))?;
            Ok(())
        }
    })
    .await?;
    Ok(started.elapsed())
}

/// The status the operator writes when an object goes live, built by the
/// operator's own code (`report::live`, `conditions::merge`): Ready, Synced,
/// Reconciling and Stalled with their messages, `observedGeneration`, a
/// `databaseId` and a `liveDigest` of the same sizes as the operator's. It
/// leaves out what only some kinds add (an IdentityProvider's discovery
/// result, a webhook's signing Secret).
pub(crate) fn live_status(p: &Planned, generation: Option<i64>) -> ResourceStatus {
    let subject = format!("{} {:?}", format!("{:?}", p.kind).to_lowercase(), p.obj.name_any());
    // A SHA-256 digest in hex: 64 characters, as the operator's.
    let digest = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let outcome = report::live(&subject, uuid::Uuid::new_v4().to_string(), &digest);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    ResourceStatus {
        observed_generation: generation,
        conditions: conditions::merge(&[], &outcome.conditions, generation, &now),
        database_id: Some(uuid::Uuid::new_v4().to_string()),
        live_digest: Some(digest),
        pending_digest: None,
    }
}

/// Deletes the bare baseline's objects (deletion, then the finalizer off).
pub(crate) async fn delete_bare(client: &Client, objects: Vec<Planned>, concurrency: usize) -> anyhow::Result<()> {
    let client = client.clone();
    for_each_concurrent(objects, concurrency, move |p| {
        let client = client.clone();
        async move {
            let api = p.api(&client);
            let name = p.obj.name_any();
            api.delete(&name, &DeleteParams::default())
                .await
                .with_context(|| format!("deleting {}", p.key()))?;
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await
            .with_context(|| format!("removing the finalizer of {}", p.key()))?;
            Ok(())
        }
    })
    .await
}

/// The convergence phase's results.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Convergence {
    /// Bare client: seconds for create + finalizer + status of N objects,
    /// the mean of [`Self::bare_rounds`].
    pub(crate) bare_seconds: f64,
    /// The bare rounds: before and after the operator phase.
    pub(crate) bare_rounds: Vec<BareRound>,
    /// CPU seconds by process, first create → all Ready.
    pub(crate) cpu_by_process: BTreeMap<String, f64>,
    /// Operator: first create → all Ready at their generation.
    pub(crate) operator_seconds: f64,
    /// `operator_seconds / bare_seconds`.
    pub(crate) ratio: f64,
    /// Seconds the benchmark's creates took.
    pub(crate) create_seconds: f64,
    /// First create → all of a shard's objects Ready, by shard.
    pub(crate) shard_seconds: Vec<f64>,
    /// Objects by shard.
    pub(crate) shard_objects: Vec<usize>,
    /// After convergence, until the operators went quiet.
    pub(crate) settle: Quiet,
    /// What was written from the first create until quiet (+ the stats flush).
    pub(crate) window: Window,
}

/// Creates every object with the operators running and waits until all are Ready.
pub(crate) async fn converge(
    world: &World,
    fleet: &mut Fleet,
    tracker: &Tracker,
    objects: &[Planned],
    args: &Args,
) -> anyhow::Result<Convergence> {
    let n = objects.len();
    let before = snapshot(world, Some(fleet), tracker).await?;
    let writes = Arc::new(BenchWrites::default());
    let cpu_before = stack_cpu();
    let started = Instant::now();
    let mut creating = tokio::spawn({
        let (client, writes, objects) = (world.client.clone(), writes.clone(), objects.to_vec());
        let concurrency = args.concurrency;
        async move {
            for_each_concurrent(objects, concurrency, move |p| {
                let (client, writes) = (client.clone(), writes.clone());
                async move { create(&client, &p, &writes).await.map(drop) }
            })
            .await?;
            Ok::<_, anyhow::Error>(started.elapsed())
        }
    });
    let all_ready = tracker.wait_until(args.timeout(), "every object Ready", |s| {
        let ready = s.objects.values().filter(|o| o.ready).count();
        if ready >= n {
            return Ok(());
        }
        let mut not_ready: Vec<String> = s
            .objects
            .iter()
            .filter(|(_, o)| !o.ready)
            .take(5)
            .map(|(k, o)| format!("{k} ({})", o.why))
            .collect();
        not_ready.sort();
        Err(format!(
            "{ready}/{n} Ready ({} seen); e.g. {}",
            s.objects.len(),
            not_ready.join("; ")
        ))
    });
    let mut create_seconds = None;
    tokio::pin!(all_ready);
    // Whichever finishes first: a failing create must not wait for the timeout.
    loop {
        tokio::select! {
            done = &mut all_ready => {
                if let Err(e) = done {
                    creating.abort();
                    return Err(e);
                }
                break;
            }
            created = &mut creating, if create_seconds.is_none() => {
                create_seconds = Some(created.context("the creating task panicked")??);
            }
        }
    }
    let operator_seconds = started.elapsed();
    let cpu_by_process = cpu_between(&cpu_before, &stack_cpu());
    let create_seconds = match create_seconds {
        Some(s) => s,
        None => creating.await.context("the creating task panicked")??,
    };
    progress(format!(
        "all {n} objects Ready after {:.1} s; waiting for the operators to go quiet",
        operator_seconds.as_secs_f64()
    ));
    let (shard_seconds, shard_objects) = per_shard(tracker, started, args.shards);
    let settle = wait_quiet(world, fleet, started, args.timeout()).await?;
    tokio::time::sleep(PG_STATS_FLUSH).await;
    let after = snapshot(world, Some(fleet), tracker).await?;
    Ok(Convergence {
        operator_seconds: operator_seconds.as_secs_f64(),
        create_seconds: create_seconds.as_secs_f64(),
        shard_seconds,
        shard_objects,
        settle,
        window: Window::between(&before, &after, writes.snapshot()),
        cpu_by_process,
        ..Convergence::default()
    })
}

/// One round of the bare client.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct BareRound {
    /// Seconds for create + finalizer + status of N objects.
    pub(crate) seconds: f64,
    /// CPU seconds by process meanwhile.
    pub(crate) cpu: BTreeMap<String, f64>,
}

impl Convergence {
    /// Records the bare rounds and the ratio to their mean.
    pub(crate) fn set_bare(&mut self, rounds: Vec<BareRound>) {
        self.bare_seconds = rounds.iter().map(|r| r.seconds).sum::<f64>() / rounds.len().max(1) as f64;
        self.bare_rounds = rounds;
        self.ratio = self.operator_seconds / self.bare_seconds.max(1e-9);
    }
}

/// By shard: seconds from `started` until its last object became Ready, and its object count.
fn per_shard(tracker: &Tracker, started: Instant, shards: usize) -> (Vec<f64>, Vec<usize>) {
    let state = lock(&tracker.state);
    let mut seconds = vec![0.0f64; shards];
    let mut objects = vec![0usize; shards];
    for o in state.objects.values() {
        if let (Some(s), Some(c)) = (seconds.get_mut(o.shard), objects.get_mut(o.shard)) {
            *c += 1;
            if let Some(at) = o.ready_since {
                *s = s.max(at.saturating_duration_since(started).as_secs_f64());
            }
        }
    }
    (seconds, objects)
}

/// The idle phase's results.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Idle {
    /// What was written.
    pub(crate) window: Window,
    /// Max RSS by shard.
    pub(crate) max_rss_kib: Vec<u64>,
    /// RSS at the end by shard.
    pub(crate) end_rss_kib: Vec<u64>,
}

/// Sits idle for the window, sampling RSS every second.
pub(crate) async fn idle(world: &World, fleet: &mut Fleet, tracker: &Tracker, seconds: u64) -> anyhow::Result<Idle> {
    let before = snapshot(world, Some(fleet), tracker).await?;
    let mut rss = RssMax::default();
    rss.sample(&fleet.rss());
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1).min(end.saturating_duration_since(Instant::now()))).await;
        fleet.check_alive()?;
        rss.sample(&fleet.rss());
    }
    let end_rss = fleet.rss();
    rss.sample(&end_rss);
    let after = snapshot(world, Some(fleet), tracker).await?;
    Ok(Idle {
        window: Window::between(&before, &after, BTreeMap::new()),
        max_rss_kib: rss.0,
        end_rss_kib: end_rss,
    })
}

/// The single changes' results.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Changes {
    /// Milliseconds of each change, in order.
    pub(crate) samples_ms: Vec<f64>,
    /// Milliseconds until the API server answered each change's PATCH, in
    /// order: the part of a sample the operator has no hand in.
    pub(crate) patch_ms: Vec<f64>,
    /// What the changes wrote, all of them (the stats flush wait included).
    pub(crate) window: Window,
}

/// Changes one Tenant's description at a time and waits for Ready at the new generation.
pub(crate) async fn single_changes(
    world: &World,
    fleet: &Fleet,
    tracker: &Tracker,
    tenants: &[&Planned],
    count: usize,
) -> anyhow::Result<Changes> {
    let writes = BenchWrites::default();
    let before = snapshot(world, Some(fleet), tracker).await?;
    let mut samples_ms = Vec::with_capacity(count);
    let mut patch_ms = Vec::with_capacity(count);
    for i in 0..count {
        let Some(p) = tenants.get(i % tenants.len().max(1)) else {
            break;
        };
        let key = p.key();
        let started = Instant::now();
        writes.record("PATCH", "tenants", "");
        let patched = p
            .api(&world.client)
            .patch(
                &p.obj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"description": format!("single change {i}")}})),
            )
            .await
            .with_context(|| format!("changing {key}"))?;
        patch_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let generation = patched.metadata.generation.unwrap_or(0);
        tracker
            .wait_until(
                CHANGE_TIMEOUT,
                &format!("{key} Ready at generation {generation}"),
                |s| match s.objects.get(&key) {
                    Some(o) if o.ready && o.generation >= generation => Ok(()),
                    Some(o) => Err(format!("generation {}: {}", o.generation, o.why)),
                    None => Err("not seen".into()),
                },
            )
            .await?;
        samples_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    tokio::time::sleep(PG_STATS_FLUSH).await;
    let after = snapshot(world, Some(fleet), tracker).await?;
    Ok(Changes {
        samples_ms,
        patch_ms,
        window: Window::between(&before, &after, writes.snapshot()),
    })
}

/// One drift attempt.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Drift {
    /// The Tenant.
    tenant: String,
    /// Milliseconds until the row was back, None if not within the timeout.
    pub(crate) corrected_ms: Option<f64>,
}

/// Edits Tenants' rows as the schema owner and waits for the operator to put
/// them back. A row not corrected in time is put back by the benchmark, so
/// the restart that follows starts from rows that match.
pub(crate) async fn drift(
    world: &World,
    tenants: &[&Planned],
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Drift>> {
    let owner = world.owner().await?;
    let tenant_api: Api<DynamicObject> = Api::all_with(world.client.clone(), &Kind::Tenant.resource());
    let mut out = Vec::new();
    // From the end of the list: the single changes took the first ones.
    for p in tenants.iter().rev().take(count) {
        let name = p.obj.name_any();
        let tenant = tenant_api.get(&name).await?;
        let id = tenant.data["status"]["databaseId"]
            .as_str()
            .ok_or_else(|| anyhow!("Tenant {name} has no status.databaseId"))?
            .to_owned();
        let declared = tenant.data["spec"]["name"].as_str().unwrap_or_default().to_owned();
        sqlx::query("UPDATE tenants SET name = 'drifted' WHERE id = $1::uuid")
            .bind(&id)
            .execute(&owner)
            .await
            .context("editing a tenant row")?;
        let started = Instant::now();
        let mut corrected_ms = None;
        while started.elapsed() < timeout {
            let now: String = sqlx::query_scalar("SELECT name FROM tenants WHERE id = $1::uuid")
                .bind(&id)
                .fetch_one(&owner)
                .await?;
            if now == declared {
                corrected_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            tokio::time::sleep(DRIFT_POLL).await;
        }
        if corrected_ms.is_none() {
            sqlx::query("UPDATE tenants SET name = $2 WHERE id = $1::uuid")
                .bind(&id)
                .bind(&declared)
                .execute(&owner)
                .await?;
        }
        progress(format!(
            "drift of {name}: {}",
            corrected_ms.map_or_else(
                || format!("not corrected within {timeout:?}"),
                |ms| format!("{ms:.0} ms")
            )
        ));
        out.push(Drift {
            tenant: name,
            corrected_ms,
        });
    }
    // Its backend flushes its statistics as it exits, before the restart's window.
    owner.close().await;
    Ok(out)
}

/// The restart's results.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Restart {
    /// Seconds from SIGTERM to exit, by shard.
    pub(crate) shutdown_seconds: Vec<f64>,
    /// Seconds from start until the controllers ran, by shard.
    pub(crate) leading_seconds: Vec<f64>,
    /// From start until quiet.
    pub(crate) quiet: Quiet,
    /// What the restart wrote (from start until quiet, + the stats flush).
    pub(crate) window: Window,
}

/// SIGTERM, start again, wait until idle.
pub(crate) async fn restart(
    world: &World,
    fleet: &mut Fleet,
    tracker: &Tracker,
    shards: usize,
    timeout: Duration,
) -> anyhow::Result<Restart> {
    let mut shutdown_seconds = Vec::new();
    for op in &mut fleet.operators {
        shutdown_seconds.push(op.terminate(Duration::from_secs(30)).await?.as_secs_f64());
    }
    // The stopped processes' backends flushed their statistics as they exited.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = snapshot(world, None, tracker).await?;
    let started = Instant::now();
    let leading = fleet.start_all(shards, timeout).await?;
    let quiet = wait_quiet(world, fleet, started, timeout).await?;
    tokio::time::sleep(PG_STATS_FLUSH).await;
    let after = snapshot(world, Some(fleet), tracker).await?;
    Ok(Restart {
        shutdown_seconds,
        leading_seconds: leading.iter().map(Duration::as_secs_f64).collect(),
        quiet,
        window: Window::between(&before, &after, BTreeMap::new()),
    })
}

/// Who owns what in the database, after everything.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Ownership {
    /// Rows of `managed_objects`.
    pub(crate) rows: i64,
    /// Distinct `(kind, object_uid)`.
    pub(crate) distinct_owners: i64,
    /// Benchmark objects without a row.
    pub(crate) missing: usize,
    /// Rows of no benchmark object.
    pub(crate) foreign: usize,
    /// Rows of each table the kinds write, at the end.
    pub(crate) table_rows: BTreeMap<String, i64>,
}

/// The tables the operator writes, with the query counting each one's rows.
const TABLES: [(&str, &str); 8] = [
    ("tenants", "SELECT count(*) FROM tenants"),
    ("identity_providers", "SELECT count(*) FROM identity_providers"),
    ("group_mappings", "SELECT count(*) FROM group_mappings"),
    ("webhook_subscriptions", "SELECT count(*) FROM webhook_subscriptions"),
    ("encrypted_secrets", "SELECT count(*) FROM encrypted_secrets"),
    ("managed_objects", "SELECT count(*) FROM managed_objects"),
    ("change_requests", "SELECT count(*) FROM change_requests"),
    ("audit_log", "SELECT count(*) FROM audit_log"),
];

/// Compares `managed_objects` with the objects the watch saw.
pub(crate) async fn ownership(world: &World, tracker: &Tracker) -> anyhow::Result<Ownership> {
    let owner = world.owner().await?;
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT kind, object_uid FROM managed_objects")
        .fetch_all(&owner)
        .await?;
    let mut table_rows = BTreeMap::new();
    for (table, sql) in TABLES {
        let rows: i64 = sqlx::query_scalar(sql)
            .fetch_one(&owner)
            .await
            .with_context(|| format!("counting the rows of {table}"))?;
        table_rows.insert(table.to_owned(), rows);
    }
    owner.close().await;
    let ours: BTreeSet<(String, String)> = lock(&tracker.state)
        .objects
        .values()
        .map(|o| (format!("{:?}", o.kind), o.uid.clone()))
        .collect();
    let theirs: BTreeSet<(String, String)> = rows.iter().cloned().collect();
    Ok(Ownership {
        rows: rows.len() as i64,
        distinct_owners: theirs.len() as i64,
        missing: ours.difference(&theirs).count(),
        foreign: theirs.difference(&ours).count(),
        table_rows,
    })
}
