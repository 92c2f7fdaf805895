//! Scale benchmark: the release `countersign` binary, run as separate child
//! processes (one per shard) against a real kube-apiserver + etcd and a real
//! PostgreSQL, converging N objects and then sitting idle, taking single
//! changes, facing drift in the database and restarting.
//!
//! ```text
//! scripts/bench.sh --objects 1000
//! COUNTERSIGN_BIN=target/release/countersign \
//!     cargo bench -p countersign-e2e --bench scale -- --objects 200 --idle-seconds 20
//! ```
//!
//! Run with `--help` for the options. The report is a markdown table on
//! stdout (progress goes to stderr); `--json PATH` also writes the numbers.
//!
//! What it measures, in one run:
//!
//! 1. the bare-client baseline: the unavoidable writes (create, finalizer
//!    patch, status apply) for N objects of the same kinds, made by kube-rs
//!    with no operator running, at the same concurrency; then the operator's
//!    convergence (first create → every object Ready at its generation) and
//!    the ratio of the two;
//! 2. API writes during the burst by verb and resource (the API server's
//!    `apiserver_request_total`), with the benchmark's own creates apart;
//! 3. database transactions and rows (`pg_stat_database`);
//! 4. `Synced=False` flips seen by a watch and the operator's error counter;
//! 5. idle cost: API and database writes, CPU seconds and RSS;
//! 6. single-change latency (spec edit → Ready at the new generation);
//! 7. drift latency (a row edited in PostgreSQL → back to its declared value);
//! 8. a restart: SIGTERM, start again, time until idle and what it wrote;
//! 9. with `--shards K`, per-shard convergence and proof of no conflicts.

#[path = "../tests/common/mod.rs"]
mod common;

use anyhow::{Context as _, anyhow, bail, ensure};
use countersign_crds::{GroupMapping, IdentityProvider, Tenant, WebhookSubscription};
use countersign_e2e::stub_idp::StubIdp;
use countersign_e2e::webhook_receiver::{KeySource, WebhookReceiver};
use countersign_e2e::{ControlPlane, Postgres};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// The label every object the operators reconcile carries (value: the run id).
const BENCH_LABEL: &str = "countersign.dev/bench";
/// The label that assigns an object to one operator process (value: 0..K).
const SHARD_LABEL: &str = "countersign.dev/shard";
/// The label of the bare-client baseline's objects, which no operator selects.
const BARE_LABEL: &str = "countersign.dev/bench-bare";
/// The finalizer the operator (and the bare baseline) puts on every object.
const FINALIZER: &str = "countersign.dev/cleanup";
/// The field manager of the benchmark's own writes.
const FIELD_MANAGER: &str = "countersign-bench";
/// The Secret (in [`common::OPERATOR_NAMESPACE`]) holding the operator's key.
const KEY_SECRET: &str = "countersign-encryption-key";
/// The Secret every IdentityProvider's OIDC client secret is read from.
const IDP_SECRET: &str = "bench-idp-client";
/// How long a PostgreSQL 15 backend may hold its statistics before they reach
/// `pg_stat_database`: an idle backend that flushed less than a second ago
/// waits `PGSTAT_IDLE_INTERVAL` (10 s). Counters are read this long after the
/// last activity of a phase.
const PG_STATS_FLUSH: Duration = Duration::from_secs(11);
/// No change of the operators' API writes, reconcile counts or WAL position
/// for this long counts as idle.
const QUIET: Duration = Duration::from_secs(3);
/// How often the quiet detector samples.
const QUIET_POLL: Duration = Duration::from_millis(200);
/// The write verbs of `apiserver_request_total` (`APPLY` is server-side apply).
const WRITE_VERBS: [&str; 6] = ["POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"];
/// How long one single change may take before the benchmark gives up.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the drift check reads the edited row.
const DRIFT_POLL: Duration = Duration::from_millis(5);

const USAGE: &str = "\
scale benchmark of the countersign operator (release binary in COUNTERSIGN_BIN)

options:
  --objects N           objects to converge (default 1000)
  --set tenants|mixed   Tenants only, or Tenants, IdentityProviders (OIDC against a
                        stub IdP), GroupMappings and WebhookSubscriptions (default tenants)
  --shards K            operator processes on disjoint label selectors (default 1)
  --concurrency C       parallel requests of the bench's appliers (default 32)
  --idle-seconds S      idle window after convergence (default 120)
  --changes M           sequential single changes (default 50)
  --drifts D            rows edited behind the operator's back (default 5)
  --drift-timeout-seconds T   how long a drift may take to be corrected (default 10)
  --resync-seconds R    the operator's --resync-seconds (default 3600)
  --operator-arg X      passed on to `countersign run` (repeatable)
  --timeout-seconds T   limit of each wait for convergence or quiet (default 900)
  --json PATH           also write the results as JSON
";

/// Prints a progress line on stderr, with the seconds since the start.
fn progress(message: impl std::fmt::Display) {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("[bench {:>7.1}s] {message}", start.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// Which objects the benchmark declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Set {
    /// Tenants only.
    Tenants,
    /// A quarter each of Tenants, IdentityProviders, GroupMappings and WebhookSubscriptions.
    Mixed,
}

/// The benchmark's options.
#[derive(Clone, Debug, Serialize)]
struct Args {
    /// Objects to converge.
    objects: usize,
    /// Which kinds.
    set: Set,
    /// Operator processes.
    shards: usize,
    /// Parallel requests of the appliers.
    concurrency: usize,
    /// The idle window.
    idle_seconds: u64,
    /// Sequential single changes.
    changes: usize,
    /// Drift attempts.
    drifts: usize,
    /// How long a drift may take to be corrected.
    drift_timeout_seconds: u64,
    /// The operator's drift-check interval.
    resync_seconds: u64,
    /// Extra arguments of `countersign run`.
    operator_args: Vec<String>,
    /// Limit of each wait.
    timeout_seconds: u64,
    /// Where to write the JSON results.
    #[serde(skip)]
    json: Option<PathBuf>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            objects: 1000,
            set: Set::Tenants,
            shards: 1,
            concurrency: 32,
            idle_seconds: 120,
            changes: 50,
            drifts: 5,
            drift_timeout_seconds: 10,
            resync_seconds: 3600,
            operator_args: Vec::new(),
            timeout_seconds: 900,
            json: None,
        }
    }
}

impl Args {
    /// Parses `--flag value` and `--flag=value`; ignores the `--bench` cargo passes.
    fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<Option<Args>> {
        let mut args = Args::default();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = || -> anyhow::Result<String> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => it.next().ok_or_else(|| anyhow!("{flag} needs a value")),
                }
            };
            match flag.as_str() {
                "--bench" => {}
                "-h" | "--help" => return Ok(None),
                "--objects" => args.objects = number(&flag, &value()?)?,
                "--shards" => args.shards = number(&flag, &value()?)?,
                "--concurrency" => args.concurrency = number(&flag, &value()?)?,
                "--idle-seconds" => args.idle_seconds = number(&flag, &value()?)?,
                "--changes" => args.changes = number(&flag, &value()?)?,
                "--drifts" => args.drifts = number(&flag, &value()?)?,
                "--drift-timeout-seconds" => args.drift_timeout_seconds = number(&flag, &value()?)?,
                "--resync-seconds" => args.resync_seconds = number(&flag, &value()?)?,
                "--timeout-seconds" => args.timeout_seconds = number(&flag, &value()?)?,
                "--operator-arg" => args.operator_args.push(value()?),
                "--json" => args.json = Some(from_invocation_dir(PathBuf::from(value()?))),
                "--set" => {
                    args.set = match value()?.as_str() {
                        "tenants" => Set::Tenants,
                        "mixed" => Set::Mixed,
                        other => bail!("--set {other}: expected tenants or mixed"),
                    }
                }
                other => bail!("unknown argument {other:?}\n\n{USAGE}"),
            }
        }
        ensure!(args.shards >= 1, "--shards must be at least 1");
        ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
        let least = match args.set {
            Set::Tenants => 1,
            Set::Mixed => 4,
        };
        ensure!(args.objects >= least, "--objects must be at least {least} for this set");
        Ok(Some(args))
    }

    /// The limit of each wait.
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }
}

/// `path` relative to the directory the benchmark was invoked from: cargo
/// runs a bench in its package's directory (`e2e/`), but passes the shell's
/// `PWD` on (`scripts/bench.sh`, which changes directory, sets
/// `COUNTERSIGN_BENCH_CWD` to where it was started).
fn from_invocation_dir(path: PathBuf) -> PathBuf {
    let dir = std::env::var_os("COUNTERSIGN_BENCH_CWD").or_else(|| std::env::var_os("PWD"));
    match dir {
        Some(pwd) if path.is_relative() => PathBuf::from(pwd).join(path),
        _ => path,
    }
}

/// Parses a number option.
fn number<T: std::str::FromStr>(flag: &str, value: &str) -> anyhow::Result<T> {
    value
        .parse()
        .map_err(|_| anyhow!("{flag} {value:?}: not a non-negative whole number"))
}

// ---------------------------------------------------------------------------
// Kinds and the objects declared
// ---------------------------------------------------------------------------

/// The kinds the benchmark declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
enum Kind {
    /// Cluster-scoped.
    Tenant,
    /// OIDC, against the stub IdP.
    IdentityProvider,
    /// Maps a group of one of the providers.
    GroupMapping,
    /// Points at the webhook receiver (no test delivery).
    WebhookSubscription,
}

/// Every kind, in the order they are applied.
const KINDS: [Kind; 4] = [
    Kind::Tenant,
    Kind::IdentityProvider,
    Kind::GroupMapping,
    Kind::WebhookSubscription,
];

impl Kind {
    /// The kind's API resource.
    fn resource(self) -> ApiResource {
        match self {
            Kind::Tenant => ApiResource::erase::<Tenant>(&()),
            Kind::IdentityProvider => ApiResource::erase::<IdentityProvider>(&()),
            Kind::GroupMapping => ApiResource::erase::<GroupMapping>(&()),
            Kind::WebhookSubscription => ApiResource::erase::<WebhookSubscription>(&()),
        }
    }
}

/// One object the benchmark declares.
#[derive(Clone, Debug)]
struct Planned {
    /// Its kind.
    kind: Kind,
    /// The object as created.
    obj: DynamicObject,
}

impl Planned {
    /// The tracker's key of the object.
    fn key(&self) -> String {
        key_of(self.kind, self.obj.metadata.namespace.as_deref(), &self.obj.name_any())
    }

    /// The API of the object's kind (in its namespace).
    fn api(&self, client: &Client) -> Api<DynamicObject> {
        let resource = self.kind.resource();
        match &self.obj.metadata.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        }
    }
}

/// `Kind/namespace/name`.
fn key_of(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    format!("{kind:?}/{}/{name}", namespace.unwrap_or(""))
}

/// What a set of declared objects is made of.
struct Declare<'a> {
    /// Name prefix (also the Tenants' slugs).
    prefix: &'a str,
    /// The namespace of the namespaced kinds.
    namespace: &'a str,
    /// The labels of the object in a shard.
    labels: &'a dyn Fn(usize) -> Value,
    /// The OIDC issuer of every IdentityProvider.
    issuer: &'a str,
    /// The URL every WebhookSubscription's own path is appended to.
    hook_url: &'a str,
}

/// How many objects of each kind a set of `n` has.
fn counts(set: Set, n: usize) -> BTreeMap<Kind, usize> {
    match set {
        Set::Tenants => BTreeMap::from([(Kind::Tenant, n)]),
        Set::Mixed => {
            let quarter = n / 4;
            BTreeMap::from([
                (Kind::Tenant, n - 3 * quarter),
                (Kind::IdentityProvider, quarter),
                (Kind::GroupMapping, quarter),
                (Kind::WebhookSubscription, quarter),
            ])
        }
    }
}

/// The objects of one run, in the order they are applied (Tenants first, as
/// `kubectl apply` of a directory would). Objects that refer to a Tenant go
/// to that Tenant's shard, so no reference crosses shards.
fn declare(set: Set, n: usize, shards: usize, d: &Declare<'_>) -> anyhow::Result<Vec<Planned>> {
    let counts = counts(set, n);
    let tenants = counts.get(&Kind::Tenant).copied().unwrap_or(0);
    let shard_of_tenant = |t: usize| t % shards;
    let mut out = Vec::with_capacity(n);
    for kind in KINDS {
        for i in 0..counts.get(&kind).copied().unwrap_or(0) {
            let tenant = i % tenants.max(1);
            let shard = shard_of_tenant(tenant);
            let tenant_name = format!("{}-t{tenant:05}", d.prefix);
            let (name, spec) = match kind {
                Kind::Tenant => (
                    tenant_name.clone(),
                    json!({
                        "slug": tenant_name,
                        "name": format!("Bench tenant {i}"),
                        "description": "declared by the scale benchmark",
                        "allowedNamespaces": [d.namespace],
                    }),
                ),
                Kind::IdentityProvider => (
                    format!("{}-idp{i:05}", d.prefix),
                    json!({
                        "tenantRef": {"name": tenant_name},
                        "displayName": format!("Bench IdP {i}"),
                        "oidc": {
                            "issuer": d.issuer,
                            "clientId": "countersign",
                            "clientSecret": {"name": IDP_SECRET, "key": "client-secret"},
                        },
                    }),
                ),
                Kind::GroupMapping => (
                    format!("{}-gm{i:05}", d.prefix),
                    json!({
                        "identityProviderRef": {"name": format!("{}-idp{i:05}", d.prefix)},
                        "groupName": format!("bench-group-{i}"),
                        "role": "CLIENT_ADMIN",
                    }),
                ),
                Kind::WebhookSubscription => (
                    format!("{}-wh{i:05}", d.prefix),
                    json!({
                        "tenantRef": {"name": tenant_name},
                        "url": format!("{}/w{i:05}", d.hook_url),
                        "events": ["certificate.issued"],
                    }),
                ),
            };
            let resource = kind.resource();
            let mut metadata = json!({"name": name, "labels": (d.labels)(shard)});
            if kind != Kind::Tenant {
                metadata["namespace"] = json!(d.namespace);
            }
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": resource.api_version,
                "kind": resource.kind,
                "metadata": metadata,
                "spec": spec,
            }))
            .with_context(|| format!("building {kind:?} {name}"))?;
            out.push(Planned { kind, obj });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Concurrency without extra crates
// ---------------------------------------------------------------------------

/// Runs `f` on every item with at most `concurrency` at a time; the first
/// error stops the rest (the remaining tasks are aborted).
async fn for_each_concurrent<T, F, Fut>(items: Vec<T>, concurrency: usize, f: F) -> anyhow::Result<()>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let queue = Arc::new(Mutex::new(items.into_iter()));
    let f = Arc::new(f);
    let mut workers: JoinSet<anyhow::Result<()>> = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (queue, f) = (queue.clone(), f.clone());
        workers.spawn(async move {
            loop {
                let next = lock(&queue).next();
                let Some(item) = next else { return Ok(()) };
                f(item).await?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.context("an applier task panicked")??;
    }
    Ok(())
}

/// Locks a mutex, ignoring poisoning (the data are plain counters and maps).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The next item of a stream. The e2e crate has no `futures` dependency (and
/// adding one would change Cargo.lock); kube's `WatchStreamExt` is a subtrait
/// of `Stream`, which is enough to poll it.
async fn next_item<S>(stream: &mut S) -> Option<S::Item>
where
    S: WatchStreamExt + Unpin,
{
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

// ---------------------------------------------------------------------------
// The API server's request counters
// ---------------------------------------------------------------------------

/// `(verb, resource, subresource)`.
type WriteKey = (String, String, String);

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
struct ApiCounts(BTreeMap<Series, f64>);

impl ApiCounts {
    /// Scrapes the API server's `/metrics` with the admin client.
    async fn scrape(client: &Client) -> anyhow::Result<ApiCounts> {
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
    fn since(&self, before: &ApiCounts) -> ApiCounts {
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
    fn writes(&self) -> BTreeMap<WriteKey, f64> {
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
    fn background_writes(&self) -> f64 {
        z(self
            .0
            .iter()
            .filter(|(s, _)| WRITE_VERBS.contains(&s.verb.as_str()) && is_background(&s.resource))
            .map(|(_, v)| v)
            .sum())
    }

    /// Every write request, background left out.
    fn total_writes(&self) -> f64 {
        self.writes().values().sum()
    }

    /// Write requests answered with an error status, by `VERB resource → code`.
    fn failed_writes(&self) -> BTreeMap<String, f64> {
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
    fn conflicts(&self) -> f64 {
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
fn parse_labels(text: &str) -> BTreeMap<String, String> {
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
struct BenchWrites(Mutex<BTreeMap<WriteKey, f64>>);

impl BenchWrites {
    /// Counts one request (whatever its answer: the API server counts it too).
    fn record(&self, verb: &str, resource: &str, subresource: &str) {
        *lock(&self.0)
            .entry((verb.to_owned(), resource.to_owned(), subresource.to_owned()))
            .or_insert(0.0) += 1.0;
    }

    /// The counts so far.
    fn snapshot(&self) -> BTreeMap<WriteKey, f64> {
        lock(&self.0).clone()
    }
}

/// `after - before`, key by key.
fn minus(after: &BTreeMap<WriteKey, f64>, before: &BTreeMap<WriteKey, f64>) -> BTreeMap<WriteKey, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

// ---------------------------------------------------------------------------
// The database's counters
// ---------------------------------------------------------------------------

/// `pg_stat_database` counters of the bench database.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct DbStats {
    /// `xact_commit + xact_rollback`.
    transactions: i64,
    /// `tup_inserted`.
    inserted: i64,
    /// `tup_updated`.
    updated: i64,
    /// `tup_deleted`.
    deleted: i64,
}

impl DbStats {
    /// `self - before`.
    fn since(self, before: DbStats) -> DbStats {
        DbStats {
            transactions: self.transactions - before.transactions,
            inserted: self.inserted - before.inserted,
            updated: self.updated - before.updated,
            deleted: self.deleted - before.deleted,
        }
    }

    /// Rows written.
    fn rows(self) -> i64 {
        self.inserted + self.updated + self.deleted
    }
}

/// Reads the bench database's statistics. `monitor` is connected to another
/// database (`postgres`), so reading them adds no transaction to the bench
/// database.
async fn db_stats(monitor: &PgPool, database: &str) -> anyhow::Result<DbStats> {
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
async fn wal_position(monitor: &PgPool) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
        .fetch_one(monitor)
        .await
        .context("reading pg_current_wal_lsn()")
}

// ---------------------------------------------------------------------------
// The operator processes
// ---------------------------------------------------------------------------

/// How every operator process is started.
struct OperatorSpec {
    /// The release `countersign` binary.
    bin: PathBuf,
    /// A kubeconfig acting as the chart's ServiceAccount.
    kubeconfig: PathBuf,
    /// The runtime role's database URL.
    database_url: String,
    /// Where the logs go.
    log_dir: PathBuf,
    /// The run id (the value of [`BENCH_LABEL`]).
    run: String,
    /// CA files the outbound calls trust (the stub IdP's, the receiver's).
    ca_files: Vec<PathBuf>,
    /// `--resync-seconds`.
    resync_seconds: u64,
    /// Extra arguments.
    extra: Vec<String>,
}

/// The operator's own counters, from its `/metrics`.
#[derive(Clone, Debug, Default)]
struct OperatorMetrics {
    /// `countersign_reconciles_total`, every kind and result.
    reconciles: f64,
    /// `countersign_reconcile_errors_total` by `kind/reason`.
    errors: BTreeMap<String, f64>,
    /// `countersign_leader`.
    leading: bool,
}

/// One `countersign run` child process; killed when dropped.
struct Operator {
    /// Its shard.
    shard: usize,
    /// Its health and metrics port on 127.0.0.1.
    port: u16,
    /// The process.
    child: Child,
    /// Its log file.
    log: PathBuf,
    /// When it was started.
    started: Instant,
}

impl Operator {
    /// Starts shard `shard` of `shards` (the n-th start of it is `start`).
    fn spawn(spec: &OperatorSpec, shard: usize, start: usize) -> anyhow::Result<Operator> {
        let port = countersign_e2e::free_port();
        let log = spec.log_dir.join(format!("operator-{shard}-{start}.log"));
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        let mut cmd = Command::new(&spec.bin);
        cmd.arg("run")
            .arg(format!("--health-addr=127.0.0.1:{port}"))
            .arg(format!("--selector={BENCH_LABEL}={},{SHARD_LABEL}={shard}", spec.run))
            .arg(format!(
                "--encryption-key-secret={}/{KEY_SECRET}",
                common::OPERATOR_NAMESPACE
            ))
            .arg(format!("--resync-seconds={}", spec.resync_seconds))
            .arg(format!("--instance=bench-{shard}"))
            // Without it every IdentityProvider waits for a second person.
            .arg("--approval-floor=false")
            // The stub IdP and the webhook receiver listen on loopback.
            .arg("--outbound-allow-loopback");
        for ca in &spec.ca_files {
            cmd.arg(format!("--outbound-ca-file={}", ca.display()));
        }
        cmd.args(&spec.extra)
            .env("KUBECONFIG", &spec.kubeconfig)
            // In the environment, not on the command line: it holds a password.
            .env("DATABASE_URL", &spec.database_url)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", spec.bin.display()))?;
        watch_over(child.id());
        Ok(Operator {
            shard,
            port,
            child,
            log,
            started: Instant::now(),
        })
    }

    /// The process id.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited, with the tail of its log.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("polling the operator")? {
            bail!(
                "operator shard {} exited with {status}; last lines of {}:\n{}",
                self.shard,
                self.log.display(),
                tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// Scrapes the operator's `/metrics`.
    async fn metrics(&self) -> anyhow::Result<OperatorMetrics> {
        let body = http_client()
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .send()
            .await
            .with_context(|| format!("scraping operator shard {}", self.shard))?
            .text()
            .await?;
        let mut m = OperatorMetrics::default();
        for line in body.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            if series.starts_with("countersign_reconciles_total") {
                m.reconciles += value;
            } else if let Some(labels) = series.strip_prefix("countersign_reconcile_errors_total{") {
                let labels = parse_labels(labels.trim_end_matches('}'));
                let key = format!(
                    "{}/{}",
                    labels.get("kind").map_or("", String::as_str),
                    labels.get("reason").map_or("", String::as_str)
                );
                *m.errors.entry(key).or_insert(0.0) += value;
            } else if series == "countersign_leader" {
                m.leading = value == 1.0;
            }
        }
        Ok(m)
    }

    /// Waits until the operator runs its controllers (`countersign_leader 1`).
    async fn wait_leading(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if let Ok(m) = self.metrics().await
                && m.leading
            {
                return Ok(self.started.elapsed());
            }
            if Instant::now() > deadline {
                bail!(
                    "operator shard {} not running its controllers after {timeout:?}; last lines of {}:\n{}",
                    self.shard,
                    self.log.display(),
                    tail(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// User + system CPU seconds so far (`/proc/<pid>/stat`).
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .context("reading the operator's /proc/<pid>/stat")?;
        // The command name may hold spaces: the fields start after its `)`.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |i: usize| -> anyhow::Result<f64> {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .ok_or_else(|| anyhow!("unexpected /proc/<pid>/stat: {stat}"))
        };
        // utime and stime are fields 14 and 15; `fields` starts at field 3.
        Ok((field(11)? + field(12)?) / clock_ticks())
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Sends SIGTERM and waits for the exit; returns how long it took.
    async fn terminate(&mut self, grace: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        if self.child.try_wait()?.is_none() {
            let status = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status()
                .context("running kill")?;
            ensure!(status.success(), "kill -TERM {} failed", self.pid());
        }
        while self.child.try_wait()?.is_none() {
            if started.elapsed() > grace {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("operator shard {} did not exit within {grace:?} of SIGTERM", self.shard);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(started.elapsed())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // Already exited and reaped after `terminate`: both calls then fail harmlessly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a detached watchdog that sends SIGTERM to `pid` once this process
/// is gone (killed without running destructors), unless `pid` exited first.
fn watch_over(pid: u32) {
    use std::os::unix::process::CommandExt as _;
    let script = r#"while kill -0 "$1" 2>/dev/null; do kill -0 "$2" 2>/dev/null || exit 0; sleep 1; done; kill -TERM "$2" 2>/dev/null"#;
    let spawned = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("countersign-bench-watchdog")
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        progress(format!("warning: no watchdog for operator pid {pid}: {e}"));
    }
}

/// Kernel clock ticks per second (`getconf CLK_TCK`, else 100).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// One plain-HTTP client for the operators' `/metrics`.
fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default()
    })
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// The operator processes, one per shard.
struct Fleet {
    /// How they are started.
    spec: OperatorSpec,
    /// The running processes, by shard.
    operators: Vec<Operator>,
    /// How many times they were started.
    starts: usize,
}

impl Fleet {
    /// Starts `shards` operators and waits until each runs its controllers.
    async fn start(spec: OperatorSpec, shards: usize, timeout: Duration) -> anyhow::Result<Fleet> {
        let mut fleet = Fleet {
            spec,
            operators: Vec::new(),
            starts: 0,
        };
        fleet.start_all(shards, timeout).await?;
        Ok(fleet)
    }

    /// Starts every shard; returns how long until each ran its controllers.
    async fn start_all(&mut self, shards: usize, timeout: Duration) -> anyhow::Result<Vec<Duration>> {
        self.starts += 1;
        self.operators = (0..shards)
            .map(|shard| Operator::spawn(&self.spec, shard, self.starts))
            .collect::<anyhow::Result<_>>()?;
        let mut leading = Vec::new();
        for op in &mut self.operators {
            leading.push(op.wait_leading(timeout).await?);
        }
        Ok(leading)
    }

    /// Fails if any operator has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.operators.iter_mut().try_for_each(Operator::check_alive)
    }

    /// Every operator's metrics, by shard.
    async fn metrics(&self) -> anyhow::Result<Vec<OperatorMetrics>> {
        let mut out = Vec::new();
        for op in &self.operators {
            out.push(op.metrics().await?);
        }
        Ok(out)
    }

    /// Every operator's CPU seconds, by shard.
    fn cpu(&self) -> anyhow::Result<Vec<f64>> {
        self.operators.iter().map(Operator::cpu_seconds).collect()
    }

    /// Every operator's RSS in KiB, by shard (0 when unreadable).
    fn rss(&self) -> Vec<u64> {
        self.operators.iter().map(|o| o.rss_kib().unwrap_or(0)).collect()
    }

    /// The sum of the reconcile counters.
    async fn reconciles(&self) -> anyhow::Result<f64> {
        Ok(self.metrics().await?.iter().map(|m| m.reconciles).sum())
    }
}

/// The per-shard maxima of RSS samples.
#[derive(Clone, Debug, Default)]
struct RssMax(Vec<u64>);

impl RssMax {
    /// Folds in one sample (by shard).
    fn sample(&mut self, rss: &[u64]) {
        if self.0.len() < rss.len() {
            self.0.resize(rss.len(), 0);
        }
        for (max, now) in self.0.iter_mut().zip(rss) {
            *max = (*max).max(*now);
        }
    }
}

// ---------------------------------------------------------------------------
// Watching the objects
// ---------------------------------------------------------------------------

/// What the benchmark knows of one object, from its watch.
#[derive(Clone, Debug)]
struct Seen {
    /// Its kind.
    kind: Kind,
    /// Its shard.
    shard: usize,
    /// `metadata.uid`.
    uid: String,
    /// `metadata.generation`.
    generation: i64,
    /// Ready=True at the current generation (condition and `status.observedGeneration`).
    ready: bool,
    /// The Synced condition's status, if any.
    synced: Option<bool>,
    /// Ready's reason and message, for errors.
    why: String,
    /// When it last became ready.
    ready_since: Option<Instant>,
}

/// The objects as the watch last saw them, and the Synced=False flips seen.
#[derive(Default)]
struct TrackerState {
    /// By [`key_of`].
    objects: HashMap<String, Seen>,
    /// Transitions into Synced=False (or first seen so), by kind.
    synced_false: BTreeMap<Kind, u64>,
}

/// Watches every benchmark object (all shards) and wakes waiters on each event.
struct Tracker {
    /// The state.
    state: Mutex<TrackerState>,
    /// Bumped on every event.
    changed: tokio::sync::watch::Sender<u64>,
}

/// The tracker and its watch tasks (aborted on drop).
struct Tracking {
    /// The shared tracker.
    tracker: Arc<Tracker>,
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
    fn start(client: &Client, selector: &str, kinds: &[Kind]) -> Tracking {
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
    async fn wait_until<T>(
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
    fn synced_false(&self) -> BTreeMap<Kind, u64> {
        lock(&self.state).synced_false.clone()
    }
}

// ---------------------------------------------------------------------------
// The world: control plane, PostgreSQL, stub IdP, webhook receiver
// ---------------------------------------------------------------------------

/// Everything the operators run against. Dropping it stops it all.
struct World {
    /// Admin client.
    client: Client,
    /// The bench database's URL as the superuser (its owner).
    owner_url: String,
    /// Connected to the `postgres` database, for statistics.
    monitor: PgPool,
    /// The bench database's name.
    database: String,
    /// The namespace of the operators' namespaced objects.
    namespace: String,
    /// The namespace of the bare baseline's objects.
    bare_namespace: String,
    /// The run id.
    run: String,
    /// Logs, kubeconfig and CA files.
    dir: PathBuf,
    /// OIDC issuer for IdentityProviders.
    stub: StubIdp,
    /// Endpoint of the WebhookSubscriptions.
    receiver: WebhookReceiver,
    /// The PostgreSQL server version.
    pg_version: String,
    /// The API server's version.
    kube_version: String,
    /// The operators' database URL (the runtime role).
    runtime_url: String,
    /// The kubeconfig the operators use.
    operator_kubeconfig: PathBuf,
    /// CA files of the stub IdP and the receiver.
    ca_files: Vec<PathBuf>,
    // Declared last: dropped (stopped) after everything that uses them.
    /// PostgreSQL.
    _pg: Postgres,
    /// kube-apiserver and etcd.
    _cp: ControlPlane,
}

impl World {
    /// Starts everything and prepares the cluster and the database.
    async fn start(set: Set) -> anyhow::Result<World> {
        let run = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
        let dir = std::env::temp_dir().join(format!("countersign-bench-{run}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        progress(format!(
            "run {run}: starting kube-apiserver + etcd and PostgreSQL (logs in {})",
            dir.display()
        ));
        let (cp, pg) = tokio::try_join!(ControlPlane::start(), Postgres::start())?;
        let client = cp.client().await?;
        common::install_crds(&client).await?;
        let kube_version = client
            .apiserver_version()
            .await
            .map(|v| v.git_version)
            .unwrap_or_default();

        let owner_url = pg.create_database().await?;
        let database = owner_url
            .rsplit('/')
            .next()
            .ok_or_else(|| anyhow!("no database in {owner_url}"))?
            .to_owned();
        let owner = countersign_reconcilers::db::connect(&owner_url).await?;
        countersign_reconcilers::db::migrate(&owner).await?;
        let role = common::runtime_role(&owner_url, &owner).await?;
        role.pool.close().await;
        let pg_version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&owner).await?;
        owner.close().await;
        let monitor = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&pg.url("postgres"))
            .await
            .context("connecting to the postgres database")?;

        let namespace = format!("bench-{run}");
        let bare_namespace = format!("bench-{run}-bare");
        for ns in [&namespace, &bare_namespace] {
            common::ensure_namespace(&client, ns).await?;
        }
        create_key_secret(&client).await?;
        let stub = StubIdp::start().await?;
        let receiver = WebhookReceiver::start(KeySource::None).await?;
        if set == Set::Mixed {
            create_idp_secret(&client, &namespace).await?;
        }
        let ca_files = vec![dir.join("stub-idp-ca.pem"), dir.join("webhook-receiver-ca.pem")];
        std::fs::write(&ca_files[0], stub.ca_pem())?;
        std::fs::write(&ca_files[1], receiver.ca_pem())?;
        let operator_kubeconfig = dir.join("operator.kubeconfig");
        write_operator_kubeconfig(cp.kubeconfig_path(), &operator_kubeconfig)?;
        Ok(World {
            client,
            owner_url,
            monitor,
            database,
            namespace,
            bare_namespace,
            run,
            dir,
            stub,
            receiver,
            pg_version,
            kube_version,
            runtime_url: role.url,
            operator_kubeconfig,
            ca_files,
            _pg: pg,
            _cp: cp,
        })
    }

    /// A fresh connection pool to the bench database as its owner. Callers
    /// close it when done: a backend flushes its statistics when it exits.
    async fn owner(&self) -> anyhow::Result<PgPool> {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.owner_url)
            .await
            .context("connecting to the bench database")
    }

    /// The bench database's statistics.
    async fn db_stats(&self) -> anyhow::Result<DbStats> {
        db_stats(&self.monitor, &self.database).await
    }

    /// The requests the stub IdP and the webhook receiver have seen.
    fn outbound(&self) -> Outbound {
        let base = self.stub.base_url();
        let path = |url: String| url.strip_prefix(&base).map(str::to_owned).unwrap_or(url);
        Outbound {
            oidc: self.stub.hits(&path(self.stub.discovery_url())) + self.stub.hits(&path(self.stub.jwks_url())),
            webhook: self.receiver.deliveries().len(),
        }
    }
}

/// The operator's encryption key: 32 random bytes in a Secret, as `scripts/up.sh` makes it.
async fn create_key_secret(client: &Client) -> anyhow::Result<()> {
    use base64::Engine as _;
    use k8s_openapi::api::core::v1::Secret;
    let key = [*uuid::Uuid::new_v4().as_bytes(), *uuid::Uuid::new_v4().as_bytes()].concat();
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": KEY_SECRET, "namespace": common::OPERATOR_NAMESPACE},
        "data": {"key": base64::engine::general_purpose::STANDARD.encode(key)},
    }))?;
    Api::<Secret>::namespaced(client.clone(), common::OPERATOR_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .context("creating the encryption key Secret")?;
    Ok(())
}

/// The Secret every IdentityProvider reads its OIDC client secret from.
async fn create_idp_secret(client: &Client, namespace: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": IDP_SECRET, "namespace": namespace},
        "stringData": {"client-secret": format!("bench-{}", uuid::Uuid::new_v4().simple())},
    }))?;
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .context("creating the IdentityProviders' client Secret")?;
    Ok(())
}

/// Writes a kubeconfig for the operators: the admin's certificate, acting as
/// the chart's ServiceAccount (`as`/`as-groups`, i.e. impersonation), so the
/// API server's RBAC judges every request by the chart's ClusterRole, as in
/// the e2e tests (`common::as_operator`) and `scripts/up.sh` (which uses a
/// ServiceAccount token instead). Impersonation costs the API server an
/// extra authorization check per request, which a token would not.
fn write_operator_kubeconfig(admin: &Path, out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(admin).with_context(|| format!("reading {}", admin.display()))?;
    let mut config: Value = serde_norway::from_str(&text).context("parsing the admin kubeconfig")?;
    let users = config
        .get_mut("users")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| anyhow!("the admin kubeconfig has no users"))?;
    for user in users {
        user["user"]["as"] = json!(common::OPERATOR_IDENTITY);
        user["user"]["as-groups"] = json!([
            "system:serviceaccounts",
            format!("system:serviceaccounts:{}", common::OPERATOR_NAMESPACE),
            "system:authenticated",
        ]);
    }
    // JSON is YAML: kube reads it as a kubeconfig.
    std::fs::write(out, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// The release binary: `COUNTERSIGN_BIN`, else `<target>/release/countersign`.
fn operator_binary() -> anyhow::Result<PathBuf> {
    let bin = match std::env::var_os("COUNTERSIGN_BIN").filter(|v| !v.is_empty()) {
        Some(bin) => PathBuf::from(bin),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| common::repo_root().join("target"))
            .join("release/countersign"),
    };
    ensure!(
        bin.is_file(),
        "no operator binary at {}: run scripts/bench.sh, or build it with \
         `cargo build --release -p countersign-operator --bin countersign` and set COUNTERSIGN_BIN",
        bin.display()
    );
    Ok(bin)
}

// ---------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------

/// Creates one object, counting the request as the benchmark's.
async fn create(client: &Client, p: &Planned, writes: &BenchWrites) -> anyhow::Result<DynamicObject> {
    writes.record("POST", &p.kind.resource().plural, "");
    p.api(client)
        .create(
            &PostParams {
                dry_run: false,
                field_manager: Some(FIELD_MANAGER.into()),
            },
            &p.obj,
        )
        .await
        .with_context(|| format!("creating {}", p.key()))
}

/// The bare client: for every object the three writes a reconcile cannot do
/// without (create, add the finalizer, apply a Ready status), at
/// `concurrency`, with no operator running. Returns how long it took.
async fn bare_baseline(client: &Client, objects: Vec<Planned>, concurrency: usize) -> anyhow::Result<Duration> {
    let writes = Arc::new(BenchWrites::default());
    let started = Instant::now();
    let client = client.clone();
    for_each_concurrent(objects, concurrency, move |p| {
        let (client, writes) = (client.clone(), writes.clone());
        async move {
            let created = create(&client, &p, &writes).await?;
            let api = p.api(&client);
            let name = p.obj.name_any();
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": [FINALIZER]}})),
            )
            .await
            .with_context(|| format!("adding the finalizer to {}", p.key()))?;
            let generation = created.metadata.generation.unwrap_or(1);
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let status = json!({
                "apiVersion": p.obj.types.as_ref().map(|t| t.api_version.clone()),
                "kind": p.obj.types.as_ref().map(|t| t.kind.clone()),
                "status": {
                    "observedGeneration": generation,
                    "conditions": [{
                        "type": "Ready", "status": "True", "reason": "Live",
                        "message": "written by the bare-client baseline",
                        "lastTransitionTime": now, "observedGeneration": generation,
                    }],
                },
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

/// Deletes the bare baseline's objects (deletion, then the finalizer off).
async fn delete_bare(client: &Client, objects: Vec<Planned>, concurrency: usize) -> anyhow::Result<()> {
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

/// A snapshot of every counter, at a phase boundary.
#[derive(Clone, Debug)]
struct Snapshot {
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
async fn snapshot(world: &World, fleet: Option<&Fleet>, tracker: &Tracker) -> anyhow::Result<Snapshot> {
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
struct Outbound {
    /// OIDC discovery documents and JWKS fetched from the stub IdP.
    oidc: usize,
    /// Deliveries that reached the webhook receiver.
    webhook: usize,
}

/// What changed between two snapshots.
#[derive(Clone, Debug, Default, Serialize)]
struct Window {
    /// Seconds between them.
    seconds: f64,
    /// When the first was taken.
    from: chrono::DateTime<chrono::Utc>,
    /// When the second was taken.
    to: chrono::DateTime<chrono::Utc>,
    /// API writes by `verb resource[/subresource]`, the benchmark's own taken out.
    #[serde(serialize_with = "write_map")]
    operator_writes: BTreeMap<WriteKey, f64>,
    /// The benchmark's own writes.
    #[serde(serialize_with = "write_map")]
    bench_writes: BTreeMap<WriteKey, f64>,
    /// The control plane's own writes (Leases), left out of the above.
    background_writes: f64,
    /// 409 answers, any verb, the benchmark's included.
    conflicts: f64,
    /// Database statistics.
    db: DbStats,
    /// Reconciles, all shards.
    reconciles: f64,
    /// Reconcile errors by shard and `kind/reason`.
    errors: Vec<BTreeMap<String, f64>>,
    /// CPU seconds by shard.
    cpu: Vec<f64>,
    /// Synced=False flips by kind.
    synced_false: BTreeMap<Kind, u64>,
    /// API writes answered with an error, by `VERB resource → code` (the
    /// benchmark's included).
    failed_writes: BTreeMap<String, f64>,
    /// Outbound calls.
    outbound: Outbound,
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

/// `VERB resource[/subresource]`.
fn write_label((verb, resource, sub): &WriteKey) -> String {
    if sub.is_empty() {
        format!("{verb} {resource}")
    } else {
        format!("{verb} {resource}/{sub}")
    }
}

impl Window {
    /// The difference of two snapshots, `bench` being the benchmark's own writes in between.
    fn between(before: &Snapshot, after: &Snapshot, bench: BTreeMap<WriteKey, f64>) -> Window {
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
    fn operator_total(&self) -> f64 {
        z(self.operator_writes.values().sum())
    }

    /// The autovacuum runs of `runs` that ended in the window.
    fn maintenance<'a>(&self, runs: &'a [Maintenance]) -> Vec<&'a Maintenance> {
        runs.iter().filter(|m| m.at >= self.from && m.at <= self.to).collect()
    }

    /// All errors of all shards.
    fn error_total(&self) -> f64 {
        z(self.errors.iter().flat_map(|e| e.values()).sum())
    }
}

/// Waits until the operators have written nothing to the API server or the
/// database and reconciled nothing for [`QUIET`]; returns the time of the last
/// change of each signal seen (relative to `since`), and the max RSS.
async fn wait_quiet(world: &World, fleet: &mut Fleet, since: Instant, timeout: Duration) -> anyhow::Result<Quiet> {
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
struct Quiet {
    /// When the wait began.
    waited_from: f64,
    /// The last operator API write.
    last_api_write: Option<f64>,
    /// The last reconcile.
    last_reconcile: Option<f64>,
    /// The last WAL movement.
    last_db_write: Option<f64>,
    /// The last change of any of them (then [`QUIET`] passed).
    idle_after: f64,
    /// Max RSS by shard while waiting.
    max_rss_kib: Vec<u64>,
}

/// The convergence phase's results.
#[derive(Clone, Debug, Default, Serialize)]
struct Convergence {
    /// Bare client: seconds for create + finalizer + status of N objects.
    bare_seconds: f64,
    /// Operator: first create → all Ready at their generation.
    operator_seconds: f64,
    /// `operator_seconds / bare_seconds`.
    ratio: f64,
    /// Seconds the benchmark's creates took.
    create_seconds: f64,
    /// First create → all of a shard's objects Ready, by shard.
    shard_seconds: Vec<f64>,
    /// Objects by shard.
    shard_objects: Vec<usize>,
    /// After convergence, until the operators went quiet.
    settle: Quiet,
    /// What was written from the first create until quiet (+ the stats flush).
    window: Window,
}

/// Creates every object with the operators running and waits until all are Ready.
async fn converge(
    world: &World,
    fleet: &mut Fleet,
    tracker: &Tracker,
    objects: &[Planned],
    args: &Args,
    bare: Duration,
) -> anyhow::Result<Convergence> {
    let n = objects.len();
    let before = snapshot(world, Some(fleet), tracker).await?;
    let writes = Arc::new(BenchWrites::default());
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
        bare_seconds: bare.as_secs_f64(),
        operator_seconds: operator_seconds.as_secs_f64(),
        ratio: operator_seconds.as_secs_f64() / bare.as_secs_f64().max(1e-9),
        create_seconds: create_seconds.as_secs_f64(),
        shard_seconds,
        shard_objects,
        settle,
        window: Window::between(&before, &after, writes.snapshot()),
    })
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
struct Idle {
    /// What was written.
    window: Window,
    /// Max RSS by shard.
    max_rss_kib: Vec<u64>,
    /// RSS at the end by shard.
    end_rss_kib: Vec<u64>,
}

/// Sits idle for the window, sampling RSS every second.
async fn idle(world: &World, fleet: &mut Fleet, tracker: &Tracker, seconds: u64) -> anyhow::Result<Idle> {
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
struct Changes {
    /// Milliseconds of each change, in order.
    samples_ms: Vec<f64>,
    /// What the changes wrote, all of them (the stats flush wait included).
    window: Window,
}

/// Changes one Tenant's description at a time and waits for Ready at the new generation.
async fn single_changes(
    world: &World,
    fleet: &Fleet,
    tracker: &Tracker,
    tenants: &[&Planned],
    count: usize,
) -> anyhow::Result<Changes> {
    let writes = BenchWrites::default();
    let before = snapshot(world, Some(fleet), tracker).await?;
    let mut samples_ms = Vec::with_capacity(count);
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
        window: Window::between(&before, &after, writes.snapshot()),
    })
}

/// One drift attempt.
#[derive(Clone, Debug, Serialize)]
struct Drift {
    /// The Tenant.
    tenant: String,
    /// Milliseconds until the row was back, None if not within the timeout.
    corrected_ms: Option<f64>,
}

/// Edits Tenants' rows as the schema owner and waits for the operator to put
/// them back. A row not corrected in time is put back by the benchmark, so
/// the restart that follows starts from rows that match.
async fn drift(world: &World, tenants: &[&Planned], count: usize, timeout: Duration) -> anyhow::Result<Vec<Drift>> {
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
struct Restart {
    /// Seconds from SIGTERM to exit, by shard.
    shutdown_seconds: Vec<f64>,
    /// Seconds from start until the controllers ran, by shard.
    leading_seconds: Vec<f64>,
    /// From start until quiet.
    quiet: Quiet,
    /// What the restart wrote (from start until quiet, + the stats flush).
    window: Window,
}

/// SIGTERM, start again, wait until idle.
async fn restart(
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
struct Ownership {
    /// Rows of `managed_objects`.
    rows: i64,
    /// Distinct `(kind, object_uid)`.
    distinct_owners: i64,
    /// Benchmark objects without a row.
    missing: usize,
    /// Rows of no benchmark object.
    foreign: usize,
    /// Rows of each table the kinds write, at the end.
    table_rows: BTreeMap<String, i64>,
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
async fn ownership(world: &World, tracker: &Tracker) -> anyhow::Result<Ownership> {
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

/// An autovacuum or autoanalyze run of the bench database, as
/// `pg_stat_all_tables` last recorded it for a table (an earlier run of the
/// same table is not seen). Its transactions and catalog rows (an analyze
/// rewrites `pg_statistic`) count in `pg_stat_database` like the operator's.
#[derive(Clone, Debug, Serialize)]
struct Maintenance {
    /// The table.
    table: String,
    /// `autovacuum` or `autoanalyze`.
    what: &'static str,
    /// When it ended.
    at: chrono::DateTime<chrono::Utc>,
}

/// The last autovacuum and autoanalyze of every table of the bench database.
async fn maintenance(world: &World) -> anyhow::Result<Vec<Maintenance>> {
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

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// Everything measured.
#[derive(Clone, Debug, Serialize)]
struct Results {
    /// The options.
    args: Args,
    /// Objects by kind.
    kinds: BTreeMap<Kind, usize>,
    /// Versions and machine.
    environment: BTreeMap<String, String>,
    /// 1–4, 9.
    convergence: Convergence,
    /// 5.
    idle: Idle,
    /// 6.
    changes: Changes,
    /// 7.
    drift: Vec<Drift>,
    /// 8.
    restart: Restart,
    /// 9.
    ownership: Ownership,
    /// Autovacuum runs, to tell their database work from the operators'.
    maintenance: Vec<Maintenance>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(args) = Args::parse(std::env::args().skip(1))? else {
        print!("{USAGE}");
        return Ok(());
    };
    let bin = operator_binary()?;
    // On Ctrl-C the run is dropped: the operators are killed, the control
    // plane and PostgreSQL stopped.
    let results = tokio::select! {
        r = run(&args, bin) => r?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    };
    let markdown = render(&results);
    println!("{markdown}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
        progress(format!("wrote {}", path.display()));
    }
    Ok(())
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Runs every phase.
async fn run(args: &Args, bin: PathBuf) -> anyhow::Result<Results> {
    let load_before = load_average();
    let world = World::start(args.set).await?;
    let mut outcome = phases(args, bin, &world).await;
    if let Ok(results) = &mut outcome {
        // Other work on the machine shows in every timing: say how busy it was.
        let load = format!("{load_before} before, {} after", load_average());
        results.environment.insert("load average (1, 5, 15 min)".into(), load);
    }
    match &outcome {
        Ok(_) => {
            let _ = std::fs::remove_dir_all(&world.dir);
        }
        Err(_) => progress(format!("failed: the operators' logs are in {}", world.dir.display())),
    }
    outcome
}

/// The phases, in order, against a started [`World`].
async fn phases(args: &Args, bin: PathBuf, world: &World) -> anyhow::Result<Results> {
    let run = world.run.clone();
    let labels = |shard: usize| json!({BENCH_LABEL: run, SHARD_LABEL: shard.to_string()});
    let bare_labels = |_shard: usize| json!({BARE_LABEL: run});
    let hook_url = world.receiver.url();
    let issuer = world.stub.issuer();
    let objects = declare(
        args.set,
        args.objects,
        args.shards,
        &Declare {
            prefix: &format!("b{run}"),
            namespace: &world.namespace,
            labels: &labels,
            issuer: &issuer,
            hook_url: &hook_url,
        },
    )?;
    let bare_objects = declare(
        args.set,
        args.objects,
        1,
        &Declare {
            prefix: &format!("b{run}-bare"),
            namespace: &world.bare_namespace,
            labels: &bare_labels,
            issuer: &issuer,
            hook_url: &hook_url,
        },
    )?;

    // A cold API server answers its first requests of a kind slower: warm it
    // up with a few objects of the same shapes first, then delete them.
    let warm = declare(
        args.set,
        args.concurrency.max(KINDS.len()),
        1,
        &Declare {
            prefix: &format!("b{run}-warm"),
            namespace: &world.bare_namespace,
            labels: &bare_labels,
            issuer: &issuer,
            hook_url: &hook_url,
        },
    )?;
    bare_baseline(&world.client, warm.clone(), args.concurrency).await?;
    delete_bare(&world.client, warm, args.concurrency).await?;

    progress(format!(
        "bare client: {} objects at concurrency {}",
        args.objects, args.concurrency
    ));
    let bare = bare_baseline(&world.client, bare_objects.clone(), args.concurrency).await?;
    progress(format!(
        "bare client took {:.1} s; deleting its objects",
        bare.as_secs_f64()
    ));
    delete_bare(&world.client, bare_objects, args.concurrency).await?;

    let spec = OperatorSpec {
        bin,
        kubeconfig: world.operator_kubeconfig.clone(),
        database_url: world.runtime_url.clone(),
        log_dir: world.dir.clone(),
        run: world.run.clone(),
        ca_files: world.ca_files.clone(),
        resync_seconds: args.resync_seconds,
        extra: args.operator_args.clone(),
    };
    progress(format!("starting {} operator process(es)", args.shards));
    let mut fleet = Fleet::start(spec, args.shards, args.timeout()).await?;
    let kinds = counts(args.set, args.objects);
    let watched: Vec<Kind> = kinds.keys().copied().collect();
    let tracking = Tracker::start(&world.client, &format!("{BENCH_LABEL}={}", world.run), &watched);
    let tracker = tracking.tracker.clone();
    // Let the operators' and the tracker's first (empty) lists settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Quiet before the burst, so nothing of the start-up lands in it.
    wait_quiet(world, &mut fleet, Instant::now(), args.timeout()).await?;
    tokio::time::sleep(PG_STATS_FLUSH).await;

    progress(format!("operator phase: creating {} objects", args.objects));
    let convergence = converge(world, &mut fleet, &tracker, &objects, args, bare).await?;

    progress(format!("idle for {} s", args.idle_seconds));
    let idle = idle(world, &mut fleet, &tracker, args.idle_seconds).await?;

    let tenants: Vec<&Planned> = objects.iter().filter(|p| p.kind == Kind::Tenant).collect();
    progress(format!("{} single changes", args.changes));
    let changes = single_changes(world, &fleet, &tracker, &tenants, args.changes).await?;

    progress(format!("{} drifts in the database", args.drifts));
    let drift = drift(
        world,
        &tenants,
        args.drifts,
        Duration::from_secs(args.drift_timeout_seconds),
    )
    .await?;

    progress("restart: SIGTERM, start again, wait until idle");
    let restart = restart(world, &mut fleet, &tracker, args.shards, args.timeout()).await?;
    let ownership = ownership(world, &tracker).await?;
    let maintenance = maintenance(world).await?;
    // Every object must still be Ready at its generation after all that.
    let n = objects.len();
    tracker
        .wait_until(args.timeout(), "every object Ready after the restart", |s| {
            let ready = s.objects.values().filter(|o| o.ready).count();
            if ready >= n {
                Ok(())
            } else {
                Err(format!("{ready}/{n} Ready"))
            }
        })
        .await?;
    drop(tracking);
    for op in &mut fleet.operators {
        op.terminate(Duration::from_secs(30)).await?;
    }
    let environment = BTreeMap::from([
        ("kube-apiserver".to_owned(), world.kube_version.clone()),
        ("postgres".to_owned(), world.pg_version.clone()),
        (
            "cpus".to_owned(),
            std::thread::available_parallelism().map_or(0, |n| n.get()).to_string(),
        ),
        ("operator".to_owned(), fleet.spec.bin.display().to_string()),
    ]);
    Ok(Results {
        args: args.clone(),
        kinds,
        environment,
        convergence,
        idle,
        changes,
        drift,
        restart,
        ownership,
        maintenance,
    })
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `a / b` with two decimals, `-` when `b` is 0.
fn per(a: f64, b: f64) -> String {
    if b == 0.0 { "-".into() } else { format!("{:.2}", a / b) }
}

/// KiB as MiB.
fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The markdown report.
fn render(r: &Results) -> String {
    let mut out = String::new();
    let n = r.args.objects as f64;
    let kinds: Vec<String> = r.kinds.iter().map(|(k, v)| format!("{v} {k:?}")).collect();
    let _ = writeln!(
        out,
        "## Countersign scale benchmark: {} objects ({}), {} shard(s)\n",
        r.args.objects,
        kinds.join(", "),
        r.args.shards
    );
    let _ = writeln!(
        out,
        "kube-apiserver {}, PostgreSQL {}, {} CPUs; applier concurrency {}; operator: \
         `countersign run --resync-seconds {} --approval-floor=false --outbound-allow-loopback{}` \
         as the chart's ServiceAccount\n",
        r.environment.get("kube-apiserver").map_or("?", String::as_str),
        r.environment.get("postgres").map_or("?", String::as_str),
        r.environment.get("cpus").map_or("?", String::as_str),
        r.args.concurrency,
        r.args.resync_seconds,
        r.args
            .operator_args
            .iter()
            .fold(String::new(), |acc, a| format!("{acc} {a}"))
    );
    if let Some(load) = r.environment.get("load average (1, 5, 15 min)") {
        let _ = writeln!(out, "load average (1, 5, 15 min): {load}\n");
    }
    render_convergence(&mut out, r, n);
    render_writes(
        &mut out,
        "API writes during the burst (first create → quiet)",
        &r.convergence.window,
        n,
    );
    render_db(
        &mut out,
        "Database during the burst",
        &r.convergence.window,
        n,
        &r.maintenance,
    );
    render_errors(&mut out, &r.convergence.window);
    render_idle(&mut out, r);
    render_changes(&mut out, r);
    render_drift(&mut out, r);
    render_restart(&mut out, r, n);
    render_ownership(&mut out, r);
    out
}

/// Section 1 (and 9: per shard).
fn render_convergence(out: &mut String, r: &Results, n: f64) {
    let c = &r.convergence;
    let _ = writeln!(out, "### Convergence\n\n| measure | value |\n|---|---|");
    let _ = writeln!(
        out,
        "| bare client: create + finalizer + status, {} objects | {:.2} s ({:.0} objects/s) |",
        r.args.objects,
        c.bare_seconds,
        n / c.bare_seconds.max(1e-9)
    );
    let _ = writeln!(
        out,
        "| operator: first create → all Ready at their generation | {:.2} s ({:.0} objects/s) |",
        c.operator_seconds,
        n / c.operator_seconds.max(1e-9)
    );
    let _ = writeln!(out, "| **convergence ratio** (operator ÷ bare) | **{:.2}×** |", c.ratio);
    // The bare client makes its three writes one after the other for each
    // object, C objects at a time; the operator's writes overlap the creates
    // and its reconciles are not limited to C.
    let _ = writeln!(out, "| the benchmark's creates alone | {:.2} s |", c.create_seconds);
    let _ = writeln!(
        out,
        "| after convergence: last operator API write / DB write (WAL) / reconcile | {} |",
        last_moves(&c.settle)
    );
    let _ = writeln!(
        out,
        "| operator CPU seconds, first create → quiet | {} |",
        join_f(&c.window.cpu, 1)
    );
    let _ = writeln!(
        out,
        "| max RSS while settling | {} |",
        c.settle
            .max_rss_kib
            .iter()
            .map(|k| mib(*k))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if c.shard_seconds.len() > 1 {
        for (i, (s, objects)) in c.shard_seconds.iter().zip(&c.shard_objects).enumerate() {
            let _ = writeln!(out, "| shard {i}: {objects} objects all Ready | {s:.2} s |");
        }
    }
    out.push('\n');
}

/// Section 2, or any window's writes.
fn render_writes(out: &mut String, title: &str, w: &Window, n: f64) {
    let _ = writeln!(
        out,
        "### {title}\n\n| verb | resource | operator | per object | benchmark's own |\n|---|---|---:|---:|---:|"
    );
    let keys: BTreeSet<&WriteKey> = w.operator_writes.keys().chain(w.bench_writes.keys()).collect();
    for key in keys {
        let (verb, resource, sub) = key;
        let resource = if sub.is_empty() {
            resource.clone()
        } else {
            format!("{resource}/{sub}")
        };
        let ours = w.operator_writes.get(key).copied().unwrap_or(0.0);
        let bench = w.bench_writes.get(key).copied().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "| {verb} | {resource} | {ours:.0} | {} | {bench:.0} |",
            per(ours, n)
        );
    }
    let bench: f64 = w.bench_writes.values().sum();
    let _ = writeln!(
        out,
        "| **all** | | **{:.0}** | **{}** | {bench:.0} |",
        w.operator_total(),
        per(w.operator_total(), n)
    );
    let _ = writeln!(
        out,
        "\n{:.1} s window; the control plane's own Lease writes ({:.0}) are left out.\n",
        w.seconds, w.background_writes
    );
}

/// Section 3, or any window's database work.
fn render_db(out: &mut String, title: &str, w: &Window, n: f64, runs: &[Maintenance]) {
    let d = w.db;
    let _ = writeln!(out, "### {title}\n\n| counter | total | per object |\n|---|---:|---:|");
    for (name, v) in [
        ("transactions (commit + rollback)", d.transactions),
        ("rows inserted", d.inserted),
        ("rows updated", d.updated),
        ("rows deleted", d.deleted),
    ] {
        let _ = writeln!(out, "| {name} | {v} | {} |", per(v as f64, n));
    }
    let _ = writeln!(out, "\n{}\n", maintenance_note(w, runs));
}

/// Section 4.
fn render_errors(out: &mut String, w: &Window) {
    let flips: Vec<String> = w.synced_false.iter().map(|(k, v)| format!("{v} {k:?}")).collect();
    let _ = writeln!(out, "### Errors during the burst\n\n| measure | value |\n|---|---|");
    let _ = writeln!(
        out,
        "| Synced=False flips (watch) | {:.0}{} |",
        w.synced_false.values().sum::<u64>(),
        if flips.is_empty() {
            String::new()
        } else {
            format!(" ({})", flips.join(", "))
        }
    );
    for (shard, errors) in w.errors.iter().enumerate() {
        let detail: Vec<String> = errors.iter().map(|(k, v)| format!("{v:.0} {k}")).collect();
        let _ = writeln!(
            out,
            "| countersign_reconcile_errors_total, shard {shard} | {:.0}{} |",
            z(errors.values().sum::<f64>()),
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", detail.join(", "))
            }
        );
    }
    let _ = writeln!(out, "| reconciles (all shards) | {:.0} |", w.reconciles);
    let _ = writeln!(out, "| API answers 409 Conflict | {:.0} |", z(w.conflicts));
    let failed: Vec<String> = w.failed_writes.iter().map(|(k, v)| format!("{v:.0} {k}")).collect();
    let _ = writeln!(
        out,
        "| API writes answered with an error | {:.0}{} |",
        z(w.failed_writes.values().sum()),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join(", "))
        }
    );
    let _ = writeln!(
        out,
        "| outbound: OIDC discovery + JWKS / webhook deliveries | {} / {} |",
        w.outbound.oidc, w.outbound.webhook
    );
    out.push('\n');
}

/// Section 5.
fn render_idle(out: &mut String, r: &Results) {
    let i = &r.idle;
    let w = &i.window;
    let _ = writeln!(
        out,
        "### Idle ({:.0} s after convergence)\n\n| measure | value |\n|---|---|",
        w.seconds
    );
    let writes: Vec<String> = w
        .operator_writes
        .iter()
        .map(|(k, v)| format!("{v:.0} {}", write_label(k)))
        .collect();
    let _ = writeln!(
        out,
        "| API writes | {:.0}{} |",
        w.operator_total(),
        if writes.is_empty() {
            String::new()
        } else {
            format!(" ({})", writes.join(", "))
        }
    );
    let _ = writeln!(
        out,
        "| DB transactions / rows written | {} / {} |",
        w.db.transactions,
        w.db.rows()
    );
    let _ = writeln!(
        out,
        "| autovacuum in the window | {} |",
        maintenance_note(w, &r.maintenance)
    );
    let _ = writeln!(out, "| reconciles | {:.0} |", w.reconciles);
    let _ = writeln!(
        out,
        "| outbound: OIDC discovery + JWKS / webhook deliveries | {} / {} |",
        w.outbound.oidc, w.outbound.webhook
    );
    let cpu: f64 = w.cpu.iter().sum();
    let _ = writeln!(
        out,
        "| operator CPU seconds | {} ({:.2}% of one core) |",
        join_f(&w.cpu, 2),
        100.0 * cpu / w.seconds.max(1e-9)
    );
    let _ = writeln!(
        out,
        "| RSS max / end | {} / {} |\n",
        i.max_rss_kib.iter().map(|k| mib(*k)).collect::<Vec<_>>().join(", "),
        i.end_rss_kib.iter().map(|k| mib(*k)).collect::<Vec<_>>().join(", ")
    );
}

/// Section 6.
fn render_changes(out: &mut String, r: &Results) {
    let c = &r.changes;
    let mut sorted = c.samples_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let m = sorted.len() as f64;
    let _ = writeln!(
        out,
        "### Single change (Tenant spec.description → Ready at the new generation), {} sequential\n",
        sorted.len()
    );
    let _ = writeln!(
        out,
        "| p50 | p99 | min | max | API writes per change | DB transactions per change | reconciles per change | OIDC calls per change |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---|---:|---:|---:|");
    let writes: Vec<String> = c
        .window
        .operator_writes
        .iter()
        .map(|(k, v)| format!("{} {}", per(*v, m), write_label(k)))
        .collect();
    let _ = writeln!(
        out,
        "| {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} ({}) | {} | {} | {} |\n",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN),
        per(c.window.operator_total(), m),
        writes.join(", "),
        per(c.window.db.transactions as f64, m),
        per(c.window.reconciles, m),
        per(c.window.outbound.oidc as f64, m)
    );
}

/// Section 7.
fn render_drift(out: &mut String, r: &Results) {
    let timeout = r.args.drift_timeout_seconds;
    let _ = writeln!(
        out,
        "### Drift (`UPDATE tenants SET name = 'drifted'` as the schema owner → row back), resync {} s\n",
        r.args.resync_seconds
    );
    let mut corrected: Vec<f64> = r.drift.iter().filter_map(|d| d.corrected_ms).collect();
    corrected.sort_by(f64::total_cmp);
    let missed = r.drift.len() - corrected.len();
    let shown = |ms: Option<f64>| match ms {
        Some(ms) => format!("{ms:.0} ms"),
        None => format!("> {timeout} s (not corrected)"),
    };
    // Median and max over every attempt, an uncorrected one counting as infinite.
    let mut all: Vec<Option<f64>> = r.drift.iter().map(|d| d.corrected_ms).collect();
    all.sort_by(|a, b| match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(b),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    let median = all.get(all.len().saturating_sub(1) / 2).copied().flatten();
    let max = all.last().copied().flatten();
    let _ = writeln!(out, "| attempts | corrected | median | max |\n|---:|---:|---|---|");
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} |\n",
        r.drift.len(),
        r.drift.len() - missed,
        if all.is_empty() { "-".into() } else { shown(median) },
        if all.is_empty() { "-".into() } else { shown(max) }
    );
}

/// Section 8.
fn render_restart(out: &mut String, r: &Results, n: f64) {
    let s = &r.restart;
    let q = &s.quiet;
    let _ = writeln!(
        out,
        "### Restart (SIGTERM, start again)\n\n| measure | value |\n|---|---|"
    );
    let _ = writeln!(out, "| SIGTERM → exit | {} s |", join_f(&s.shutdown_seconds, 2));
    let _ = writeln!(
        out,
        "| start → controllers running | {} s |",
        join_f(&s.leading_seconds, 2)
    );
    let _ = writeln!(
        out,
        "| start → last API write / DB write (WAL) / reconcile | {} |",
        last_moves(q)
    );
    let _ = writeln!(
        out,
        "| operator CPU seconds, start → quiet | {} |",
        join_f(&s.window.cpu, 2)
    );
    let _ = writeln!(
        out,
        "| start → idle ({} s without any) | {:.1} s |",
        QUIET.as_secs(),
        q.idle_after
    );
    let writes: Vec<String> = s
        .window
        .operator_writes
        .iter()
        .map(|(k, v)| format!("{v:.0} {}", write_label(k)))
        .collect();
    let _ = writeln!(
        out,
        "| API writes | {:.0} ({} per object){} |",
        s.window.operator_total(),
        per(s.window.operator_total(), n),
        if writes.is_empty() {
            String::new()
        } else {
            format!(": {}", writes.join(", "))
        }
    );
    let _ = writeln!(
        out,
        "| DB transactions / rows written | {} ({} per object) / {} |",
        s.window.db.transactions,
        per(s.window.db.transactions as f64, n),
        s.window.db.rows()
    );
    let _ = writeln!(
        out,
        "| autovacuum in the window | {} |",
        maintenance_note(&s.window, &r.maintenance)
    );
    let _ = writeln!(out, "| reconciles | {:.0} |", s.window.reconciles);
    let _ = writeln!(out, "| reconcile errors | {:.0} |", s.window.error_total());
    let _ = writeln!(
        out,
        "| outbound: OIDC discovery + JWKS / webhook deliveries | {} / {} |",
        s.window.outbound.oidc, s.window.outbound.webhook
    );
    let _ = writeln!(
        out,
        "| max RSS after restart | {} |\n",
        q.max_rss_kib.iter().map(|k| mib(*k)).collect::<Vec<_>>().join(", ")
    );
}

/// Section 9.
fn render_ownership(out: &mut String, r: &Results) {
    let o = &r.ownership;
    let w = &r.convergence.window;
    let _ = writeln!(out, "### Ownership and conflicts\n\n| check | value |\n|---|---|");
    let _ = writeln!(
        out,
        "| managed_objects rows / distinct (kind, object_uid) / objects | {} / {} / {} |",
        o.rows, o.distinct_owners, r.args.objects
    );
    let _ = writeln!(
        out,
        "| objects without a row / rows of no object | {} / {} |",
        o.missing, o.foreign
    );
    let tables: Vec<String> = o
        .table_rows
        .iter()
        .filter(|(_, rows)| **rows > 0)
        .map(|(t, rows)| format!("{t} {rows}"))
        .collect();
    let _ = writeln!(out, "| rows in the database at the end | {} |", tables.join(", "));
    let _ = writeln!(out, "| 409 Conflicts during the burst | {:.0} |", z(w.conflicts));
    let _ = writeln!(out, "| reconcile errors during the burst | {:.0} |", w.error_total());
    let ok = o.rows == r.args.objects as i64 && o.distinct_owners == o.rows && o.missing == 0 && o.foreign == 0;
    let _ = writeln!(
        out,
        "| verdict | {} |",
        if ok {
            "every object owns exactly one row"
        } else {
            "**MISMATCH**"
        }
    );
}

/// The last moves of a [`Quiet`], `none` for a signal that did not move
/// after the wait began.
fn last_moves(q: &Quiet) -> String {
    let at = |t: Option<f64>| t.map_or_else(|| format!("none after {:.1} s", q.waited_from), |t| format!("{t:.1} s"));
    format!(
        "{} / {} / {}",
        at(q.last_api_write),
        at(q.last_db_write),
        at(q.last_reconcile)
    )
}

/// Which autovacuum runs ended in the window (their work is in its counters).
fn maintenance_note(w: &Window, runs: &[Maintenance]) -> String {
    let inside: Vec<String> = w
        .maintenance(runs)
        .iter()
        .map(|m| format!("{} {}", m.what, m.table))
        .collect();
    if inside.is_empty() {
        "no autovacuum or autoanalyze ended in the window".into()
    } else {
        format!(
            "autovacuum ran in the window (its transactions and catalog rows are counted): {}",
            inside.join(", ")
        )
    }
}

/// `v` with a negative zero (an empty sum) made positive, for printing.
fn z(v: f64) -> f64 {
    if v == 0.0 { 0.0 } else { v }
}

/// Numbers joined with `, `.
fn join_f(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}
