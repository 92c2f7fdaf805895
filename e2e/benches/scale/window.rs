//! Counters at phase boundaries: snapshots, the difference of two, and waiting until the operators are quiet.

use crate::metrics::{ApiCounts, DbStats, Maintenance, RssMax, WriteKey, minus, wal_position, write_label};
use crate::objects::Kind;
use crate::operator::{Fleet, OperatorMetrics};
use crate::tracker::Tracker;
use crate::util::z;
use crate::world::World;
use anyhow::ensure;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// No change of the operators' API writes, reconcile counts or WAL position
/// for this long counts as idle.
pub(crate) const QUIET: Duration = Duration::from_secs(3);

/// How often the quiet detector samples.
const QUIET_POLL: Duration = Duration::from_millis(200);

/// A snapshot of every counter, at a phase boundary.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    /// When it was taken.
    at: Instant,
    /// The same, on the clock PostgreSQL's timestamps use.
    wall: chrono::DateTime<chrono::Utc>,
    /// The API server's requests.
    api: ApiCounts,
    /// The bench database's statistics.
    db: DbStats,
    /// The operators' counters, by shard.
    operators: Vec<OperatorMetrics>,
    /// The operators' CPU seconds, by shard.
    cpu: Vec<f64>,
    /// The Synced=False flips so far.
    synced_false: BTreeMap<Kind, u64>,
    /// Outbound calls that reached the stub IdP and the webhook receiver.
    outbound: Outbound,
}

/// Takes a [`Snapshot`] (of the operators' counters too, unless `fleet` is None:
/// none is running).
pub(crate) async fn snapshot(world: &World, fleet: Option<&Fleet>, tracker: &Tracker) -> anyhow::Result<Snapshot> {
    let (operators, cpu) = match fleet {
        Some(fleet) => (fleet.metrics().await?, fleet.cpu()?),
        None => (Vec::new(), Vec::new()),
    };
    Ok(Snapshot {
        at: Instant::now(),
        wall: chrono::Utc::now(),
        api: ApiCounts::scrape(&world.client).await?,
        db: world.db_stats().await?,
        operators,
        cpu,
        synced_false: tracker.synced_false(),
        outbound: world.outbound(),
    })
}

/// Requests the operators made to the benchmark's outbound endpoints.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Outbound {
    /// OIDC discovery documents and JWKS fetched from the stub IdP.
    pub(crate) oidc: usize,
    /// Deliveries that reached the webhook receiver.
    pub(crate) webhook: usize,
}

/// What changed between two snapshots.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Window {
    /// Seconds between them.
    pub(crate) seconds: f64,
    /// When the first was taken.
    from: chrono::DateTime<chrono::Utc>,
    /// When the second was taken.
    to: chrono::DateTime<chrono::Utc>,
    /// API writes by `verb resource[/subresource]`, the benchmark's own taken out.
    #[serde(serialize_with = "write_map")]
    pub(crate) operator_writes: BTreeMap<WriteKey, f64>,
    /// The benchmark's own writes.
    #[serde(serialize_with = "write_map")]
    pub(crate) bench_writes: BTreeMap<WriteKey, f64>,
    /// The control plane's own writes (Leases), left out of the above.
    pub(crate) background_writes: f64,
    /// 409 answers, any verb, the benchmark's included.
    pub(crate) conflicts: f64,
    /// Database statistics.
    pub(crate) db: DbStats,
    /// Reconciles, all shards.
    pub(crate) reconciles: f64,
    /// Reconcile errors by shard and `kind/reason`.
    pub(crate) errors: Vec<BTreeMap<String, f64>>,
    /// CPU seconds by shard.
    pub(crate) cpu: Vec<f64>,
    /// Synced=False flips by kind.
    pub(crate) synced_false: BTreeMap<Kind, u64>,
    /// API writes answered with an error, by `VERB resource → code` (the
    /// benchmark's included).
    pub(crate) failed_writes: BTreeMap<String, f64>,
    /// Outbound calls.
    pub(crate) outbound: Outbound,
}

/// Serializes a [`WriteKey`] map as `{"PATCH tenants/status": n}`.
fn write_map<S: serde::Serializer>(map: &BTreeMap<WriteKey, f64>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let mut m = s.serialize_map(Some(map.len()))?;
    for (k, v) in map {
        m.serialize_entry(&write_label(k), v)?;
    }
    m.end()
}

impl Window {
    /// The difference of two snapshots, `bench` being the benchmark's own writes in between.
    pub(crate) fn between(before: &Snapshot, after: &Snapshot, bench: BTreeMap<WriteKey, f64>) -> Window {
        let api = after.api.since(&before.api);
        let operator_writes = minus(&api.writes(), &bench);
        let same_process = before.operators.len() == after.operators.len();
        let errors = after
            .operators
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let was = before.operators.get(i).filter(|_| same_process);
                m.errors
                    .iter()
                    .map(|(k, v)| (k.clone(), v - was.and_then(|w| w.errors.get(k)).copied().unwrap_or(0.0)))
                    .filter(|(_, v)| *v != 0.0)
                    .collect()
            })
            .collect();
        let sum = |s: &Snapshot| s.operators.iter().map(|m| m.reconciles).sum::<f64>();
        Window {
            seconds: (after.at - before.at).as_secs_f64(),
            from: before.wall,
            to: after.wall,
            operator_writes,
            bench_writes: bench,
            background_writes: api.background_writes(),
            conflicts: api.conflicts(),
            db: after.db.since(before.db),
            reconciles: sum(after) - sum(before),
            errors,
            cpu: after
                .cpu
                .iter()
                .zip(before.cpu.iter().chain(std::iter::repeat(&0.0)))
                .map(|(a, b)| a - b)
                .collect(),
            synced_false: after
                .synced_false
                .iter()
                .map(|(k, v)| (*k, v - before.synced_false.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect(),
            failed_writes: api.failed_writes(),
            outbound: Outbound {
                oidc: after.outbound.oidc - before.outbound.oidc,
                webhook: after.outbound.webhook - before.outbound.webhook,
            },
        }
    }

    /// All operator writes.
    pub(crate) fn operator_total(&self) -> f64 {
        z(self.operator_writes.values().sum())
    }

    /// The autovacuum runs of `runs` that ended in the window.
    pub(crate) fn maintenance<'a>(&self, runs: &'a [Maintenance]) -> Vec<&'a Maintenance> {
        runs.iter().filter(|m| m.at >= self.from && m.at <= self.to).collect()
    }

    /// All errors of all shards.
    pub(crate) fn error_total(&self) -> f64 {
        z(self.errors.iter().flat_map(|e| e.values()).sum())
    }
}

/// Waits until the operators have written nothing to the API server or the
/// database and reconciled nothing for [`QUIET`]; returns the time of the last
/// change of each signal seen (relative to `since`), and the max RSS.
pub(crate) async fn wait_quiet(
    world: &World,
    fleet: &mut Fleet,
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<Quiet> {
    let deadline = Instant::now() + timeout;
    let mut last = (
        ApiCounts::scrape(&world.client).await?.total_writes(),
        fleet.reconciles().await?,
        wal_position(&world.monitor).await?,
    );
    let mut quiet = Quiet::default();
    let mut changed = Instant::now();
    quiet.waited_from = (changed - since).as_secs_f64();
    let mut rss = RssMax::default();
    loop {
        tokio::time::sleep(QUIET_POLL).await;
        fleet.check_alive()?;
        rss.sample(&fleet.rss());
        let now = (
            ApiCounts::scrape(&world.client).await?.total_writes(),
            fleet.reconciles().await?,
            wal_position(&world.monitor).await?,
        );
        let at = Instant::now();
        let elapsed = (at - since).as_secs_f64();
        if now.0 != last.0 {
            quiet.last_api_write = Some(elapsed);
        }
        if now.1 != last.1 {
            quiet.last_reconcile = Some(elapsed);
        }
        if now.2 != last.2 {
            quiet.last_db_write = Some(elapsed);
        }
        if now != last {
            changed = at;
            last = now;
        } else if at - changed >= QUIET {
            quiet.idle_after = (changed - since).as_secs_f64();
            quiet.max_rss_kib = rss.0;
            return Ok(quiet);
        }
        ensure!(
            at < deadline,
            "the operators never went quiet within {timeout:?} (API writes, reconciles or WAL kept moving)"
        );
    }
}

/// When the signals of [`wait_quiet`] last moved, in seconds from its
/// `since`; None when they did not move once the wait began.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Quiet {
    /// When the wait began.
    pub(crate) waited_from: f64,
    /// The last operator API write.
    pub(crate) last_api_write: Option<f64>,
    /// The last reconcile.
    pub(crate) last_reconcile: Option<f64>,
    /// The last WAL movement.
    pub(crate) last_db_write: Option<f64>,
    /// The last change of any of them (then [`QUIET`] passed).
    pub(crate) idle_after: f64,
    /// Max RSS by shard while waiting.
    pub(crate) max_rss_kib: Vec<u64>,
}
