//! The raw counters: the API server's requests, the database's statistics, the operators' RSS, and autovacuum runs.

use crate::util::{lock, z};
use crate::world::World;
use anyhow::{Context as _, ensure};
use kube::Client;
use serde::Serialize;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The write verbs of `apiserver_request_total` (`APPLY` is server-side apply).
const WRITE_VERBS: [&str; 6] = ["POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"];

/// `(verb, resource, subresource)`.
pub(crate) type WriteKey = (String, String, String);

/// One series of `apiserver_request_total`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    /// `POST`, `PATCH`, `APPLY`, `GET`, ...
    verb: String,
    /// e.g. `tenants`, `events`, `secrets`.
    resource: String,
    /// e.g. `status`, or empty.
    subresource: String,
    /// The HTTP status code.
    code: String,
}

/// A scrape (or the difference of two scrapes) of `apiserver_request_total`.
#[derive(Clone, Debug, Default)]
pub(crate) struct ApiCounts(BTreeMap<Series, f64>);

impl ApiCounts {
    /// Scrapes the API server's `/metrics` with the admin client.
    pub(crate) async fn scrape(client: &Client) -> anyhow::Result<ApiCounts> {
        let request = http::Request::get("/metrics")
            .body(Vec::new())
            .context("building the /metrics request")?;
        let text = client
            .request_text(request)
            .await
            .context("scraping the API server's /metrics")?;
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let labels = parse_labels(labels);
            let label = |name: &str| labels.get(name).cloned().unwrap_or_default();
            let series = Series {
                verb: label("verb"),
                resource: label("resource"),
                subresource: label("subresource"),
                code: label("code"),
            };
            *counts.entry(series).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
        }
        ensure!(
            !counts.is_empty(),
            "the API server's /metrics has no apiserver_request_total"
        );
        Ok(ApiCounts(counts))
    }

    /// `self - before`, series by series.
    pub(crate) fn since(&self, before: &ApiCounts) -> ApiCounts {
        ApiCounts(
            self.0
                .iter()
                .map(|(s, v)| (s.clone(), v - before.0.get(s).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v != 0.0)
                .collect(),
        )
    }

    /// Write requests by verb and resource, the control plane's own
    /// background writes left out (see [`is_background`]).
    pub(crate) fn writes(&self) -> BTreeMap<WriteKey, f64> {
        let mut out = BTreeMap::new();
        for (s, v) in &self.0 {
            if WRITE_VERBS.contains(&s.verb.as_str()) && !is_background(&s.resource) {
                *out.entry((s.verb.clone(), s.resource.clone(), s.subresource.clone()))
                    .or_insert(0.0) += v;
            }
        }
        out
    }

    /// The control plane's own background writes (see [`is_background`]).
    pub(crate) fn background_writes(&self) -> f64 {
        z(self
            .0
            .iter()
            .filter(|(s, _)| WRITE_VERBS.contains(&s.verb.as_str()) && is_background(&s.resource))
            .map(|(_, v)| v)
            .sum())
    }

    /// Every write request, background left out.
    pub(crate) fn total_writes(&self) -> f64 {
        self.writes().values().sum()
    }

    /// Write requests answered with an error status, by `VERB resource → code`.
    pub(crate) fn failed_writes(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (s, v) in &self.0 {
            if WRITE_VERBS.contains(&s.verb.as_str()) && !is_background(&s.resource) && !s.code.starts_with('2') {
                let key = (s.verb.clone(), s.resource.clone(), s.subresource.clone());
                *out.entry(format!("{} → {}", write_label(&key), s.code)).or_insert(0.0) += v;
            }
        }
        out
    }

    /// Requests answered 409 Conflict, any verb.
    pub(crate) fn conflicts(&self) -> f64 {
        z(self.0.iter().filter(|(s, _)| s.code == "409").map(|(_, v)| v).sum())
    }
}

/// Whether writes to `resource` are the control plane's own: kube-apiserver
/// renews its identity Lease (`PUT leases` in kube-system) every 10 s, and no
/// operator in the benchmark uses a Lease unless it is given `--leader-elect`
/// (then its lease writes are left out too: say so in the report).
fn is_background(resource: &str) -> bool {
    resource == "leases"
}

/// Parses `a="b",c="d\"e"` into a map.
pub(crate) fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(escaped) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').trim().to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// The benchmark's own write requests, by verb and resource, so they can be
/// told apart from the operators'.
#[derive(Default)]
pub(crate) struct BenchWrites(Mutex<BTreeMap<WriteKey, f64>>);

impl BenchWrites {
    /// Counts one request (whatever its answer: the API server counts it too).
    pub(crate) fn record(&self, verb: &str, resource: &str, subresource: &str) {
        *lock(&self.0)
            .entry((verb.to_owned(), resource.to_owned(), subresource.to_owned()))
            .or_insert(0.0) += 1.0;
    }

    /// The counts so far.
    pub(crate) fn snapshot(&self) -> BTreeMap<WriteKey, f64> {
        lock(&self.0).clone()
    }
}

/// `after - before`, key by key.
pub(crate) fn minus(after: &BTreeMap<WriteKey, f64>, before: &BTreeMap<WriteKey, f64>) -> BTreeMap<WriteKey, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

/// `pg_stat_database` counters of the bench database.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct DbStats {
    /// `xact_commit + xact_rollback`.
    pub(crate) transactions: i64,
    /// `tup_inserted`.
    pub(crate) inserted: i64,
    /// `tup_updated`.
    pub(crate) updated: i64,
    /// `tup_deleted`.
    pub(crate) deleted: i64,
}

impl DbStats {
    /// `self - before`.
    pub(crate) fn since(self, before: DbStats) -> DbStats {
        DbStats {
            transactions: self.transactions - before.transactions,
            inserted: self.inserted - before.inserted,
            updated: self.updated - before.updated,
            deleted: self.deleted - before.deleted,
        }
    }

    /// Rows written.
    pub(crate) fn rows(self) -> i64 {
        self.inserted + self.updated + self.deleted
    }
}

/// Reads the bench database's statistics. `monitor` is connected to another
/// database (`postgres`), so reading them adds no transaction to the bench
/// database.
pub(crate) async fn db_stats(monitor: &PgPool, database: &str) -> anyhow::Result<DbStats> {
    let (transactions, inserted, updated, deleted): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT xact_commit + xact_rollback, tup_inserted, tup_updated, tup_deleted \
         FROM pg_stat_database WHERE datname = $1",
    )
    .bind(database)
    .fetch_one(monitor)
    .await
    .context("reading pg_stat_database")?;
    Ok(DbStats {
        transactions,
        inserted,
        updated,
        deleted,
    })
}

/// The server's WAL position in bytes: it moves at once with every write
/// (unlike `pg_stat_database`, which backends flush lazily), so it tells when
/// the database was last written. Server-wide: autovacuum moves it too.
pub(crate) async fn wal_position(monitor: &PgPool) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
        .fetch_one(monitor)
        .await
        .context("reading pg_current_wal_lsn()")
}

/// The per-shard maxima of RSS samples.
#[derive(Clone, Debug, Default)]
pub(crate) struct RssMax(pub(crate) Vec<u64>);

impl RssMax {
    /// Folds in one sample (by shard).
    pub(crate) fn sample(&mut self, rss: &[u64]) {
        if self.0.len() < rss.len() {
            self.0.resize(rss.len(), 0);
        }
        for (max, now) in self.0.iter_mut().zip(rss) {
            *max = (*max).max(*now);
        }
    }
}

/// `VERB resource[/subresource]`.
pub(crate) fn write_label((verb, resource, sub): &WriteKey) -> String {
    if sub.is_empty() {
        format!("{verb} {resource}")
    } else {
        format!("{verb} {resource}/{sub}")
    }
}

/// An autovacuum or autoanalyze run of the bench database, as
/// `pg_stat_all_tables` last recorded it for a table (an earlier run of the
/// same table is not seen). Its transactions and catalog rows (an analyze
/// rewrites `pg_statistic`) count in `pg_stat_database` like the operator's.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Maintenance {
    /// The table.
    pub(crate) table: String,
    /// `autovacuum` or `autoanalyze`.
    pub(crate) what: &'static str,
    /// When it ended.
    pub(crate) at: chrono::DateTime<chrono::Utc>,
}

/// The last autovacuum and autoanalyze of every table of the bench database.
pub(crate) async fn maintenance(world: &World) -> anyhow::Result<Vec<Maintenance>> {
    type Row = (
        String,
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    let owner = world.owner().await?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT relname::text, last_autovacuum, last_autoanalyze FROM pg_stat_all_tables \
         WHERE last_autovacuum IS NOT NULL OR last_autoanalyze IS NOT NULL",
    )
    .fetch_all(&owner)
    .await
    .context("reading pg_stat_all_tables")?;
    owner.close().await;
    let mut out = Vec::new();
    for (table, vacuum, analyze) in rows {
        for (what, at) in [("autovacuum", vacuum), ("autoanalyze", analyze)] {
            if let Some(at) = at {
                out.push(Maintenance {
                    table: table.clone(),
                    what,
                    at,
                });
            }
        }
    }
    out.sort_by_key(|m| m.at);
    Ok(out)
}
