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

#[path = "../../tests/common/mod.rs"]
mod common;

mod args;
mod metrics;
mod objects;
mod operator;
mod phases;
mod report;
mod tracker;
mod util;
mod window;
mod world;

use anyhow::{Context as _, bail};
use args::{Args, USAGE};
use metrics::maintenance;
use objects::{BARE_LABEL, BENCH_LABEL, Declare, KINDS, Kind, Planned, SHARD_LABEL, counts, declare};
use operator::{Fleet, OperatorSpec, operator_binary};
use phases::{
    BareRound, PG_STATS_FLUSH, bare_baseline, converge, delete_bare, drift, idle, ownership, restart, single_changes,
};
use report::{Results, render};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracker::Tracker;
use util::{cpu_between, progress, stack_cpu};
use window::wait_quiet;
use world::World;

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
        Ok(_) if args.keep_logs => progress(format!("the operators' logs are in {}", world.dir.display())),
        Ok(_) => {
            let _ = std::fs::remove_dir_all(&world.dir);
        }
        Err(_) => progress(format!("failed: the operators' logs are in {}", world.dir.display())),
    }
    outcome
}

/// One round of the bare client on fresh objects (named after `round`),
/// under the benchmark's own watch as in the operator phase; its objects are
/// deleted afterwards. Returns how long the writes took and the CPU the
/// stack used meanwhile.
async fn bare_round(world: &World, args: &Args, round: &str) -> anyhow::Result<BareRound> {
    let run = world.run.clone();
    let bare_labels = |_shard: usize| json!({BARE_LABEL: run});
    let hook_url = world.receiver.url();
    let issuer = world.stub.issuer();
    let objects = declare(
        args.set,
        args.objects,
        1,
        &Declare {
            prefix: &format!("b{}-bare-{round}", world.run),
            namespace: &world.bare_namespace,
            labels: &bare_labels,
            issuer: &issuer,
            hook_url: &hook_url,
        },
    )?;

    progress(format!(
        "bare client ({round} the operator phase): {} objects at concurrency {}",
        args.objects, args.concurrency
    ));
    // The benchmark's own watch of the objects loads the API server in the
    // operator phase (every write is sent to it): it watches the bare
    // client's objects too, so both phases carry the same measuring load.
    let watched: Vec<Kind> = counts(args.set, args.objects).keys().copied().collect();
    let tracking = Tracker::start(&world.client, &format!("{BARE_LABEL}={}", world.run), &watched);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = stack_cpu();
    let took = bare_baseline(&world.client, &world.operator_client, objects.clone(), args.concurrency).await?;
    let cpu = cpu_between(&cpu_before, &stack_cpu());
    drop(tracking);
    progress(format!(
        "bare client took {:.1} s; deleting its objects",
        took.as_secs_f64()
    ));
    delete_bare(&world.client, objects, args.concurrency).await?;
    Ok(BareRound {
        seconds: took.as_secs_f64(),
        cpu,
    })
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
    bare_baseline(&world.client, &world.operator_client, warm.clone(), args.concurrency).await?;
    delete_bare(&world.client, warm, args.concurrency).await?;

    let bare_before = bare_round(world, args, "before").await?;

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
    let mut convergence = converge(world, &mut fleet, &tracker, &objects, args).await?;
    // The machine's load drifts over a run: the bare client runs again after
    // the operator phase (the operators idle, their selectors exclude its
    // objects) and the ratio divides by the mean of both rounds.
    let bare_after = bare_round(world, args, "after").await?;
    convergence.set_bare(vec![bare_before, bare_after]);

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
