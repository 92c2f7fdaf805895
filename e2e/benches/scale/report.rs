//! The results of a run and their markdown report.

use crate::args::Args;
use crate::metrics::{Maintenance, WriteKey, write_label};
use crate::objects::Kind;
use crate::phases::{Changes, Convergence, Drift, Idle, Ownership, Restart};
use crate::util::{HOST_STEAL, MACHINE_BUSY, z};
use crate::window::{QUIET, Quiet, Window};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Everything measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Results {
    /// The options.
    pub(crate) args: Args,
    /// Objects by kind.
    pub(crate) kinds: BTreeMap<Kind, usize>,
    /// Versions and machine.
    pub(crate) environment: BTreeMap<String, String>,
    /// 1–4, 9.
    pub(crate) convergence: Convergence,
    /// 5.
    pub(crate) idle: Idle,
    /// 6.
    pub(crate) changes: Changes,
    /// 7.
    pub(crate) drift: Vec<Drift>,
    /// 8.
    pub(crate) restart: Restart,
    /// 9.
    pub(crate) ownership: Ownership,
    /// Autovacuum runs, to tell their database work from the operators'.
    pub(crate) maintenance: Vec<Maintenance>,
}

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
pub(crate) fn render(r: &Results) -> String {
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
        "| bare client: create + finalizer + status, {} objects (mean of the rounds before and after the operator phase: {} s) | {:.2} s ({:.0} objects/s) |",
        r.args.objects,
        join_f(&c.bare_rounds.iter().map(|b| b.seconds).collect::<Vec<_>>(), 2),
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
    render_stack_cpu(out, c);
}

/// Where the machine's cores went: CPU seconds by process in each bare
/// round and in the operator phase (first create → all Ready).
fn render_stack_cpu(out: &mut String, c: &Convergence) {
    let mut columns: Vec<(String, &BTreeMap<String, f64>, f64)> = Vec::new();
    let mut rounds = c.bare_rounds.iter();
    if let Some(first) = rounds.next() {
        columns.push(("bare, before".into(), &first.cpu, first.seconds));
    }
    columns.push(("operator phase".into(), &c.cpu_by_process, c.operator_seconds));
    for later in rounds {
        columns.push(("bare, after".into(), &later.cpu, later.seconds));
    }
    let _ = writeln!(
        out,
        "CPU seconds by process (the benchmark's creates and watch included in every column):\n\n| process | {} |\n|---|{}",
        columns
            .iter()
            .map(|(name, _, secs)| format!("{name} ({secs:.1} s)"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(columns.len())
    );
    let is_process = |name: &str| name != MACHINE_BUSY && name != HOST_STEAL;
    let stack_total =
        |cpu: &BTreeMap<String, f64>| -> f64 { cpu.iter().filter(|(name, _)| is_process(name)).map(|(_, v)| v).sum() };
    let names: BTreeSet<&String> = columns
        .iter()
        .flat_map(|(_, cpu, _)| cpu.keys())
        .filter(|name| is_process(name))
        .collect();
    for name in names {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, cpu, _)| format!("{:.1}", z(cpu.get(name).copied().unwrap_or(0.0))))
            .collect();
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    }
    let totals: Vec<String> = columns
        .iter()
        .map(|(_, cpu, secs)| {
            let total = stack_total(cpu);
            format!("**{total:.1}** ({:.2} cores)", total / secs.max(1e-9))
        })
        .collect();
    let _ = writeln!(out, "| **all** | {} |", totals.join(" | "));
    // What else ran: another process's load, or the host's, slows a phase
    // without showing in the stack's own CPU seconds.
    let others: Vec<String> = columns
        .iter()
        .map(|(_, cpu, _)| match cpu.get(MACHINE_BUSY) {
            Some(busy) => format!("{:.1}", z((busy - stack_total(cpu)).max(0.0))),
            None => "?".to_owned(),
        })
        .collect();
    let steal: Vec<String> = columns
        .iter()
        .map(|(_, cpu, _)| cpu.get(HOST_STEAL).map_or("?".to_owned(), |v| format!("{:.1}", z(*v))))
        .collect();
    let _ = writeln!(out, "| other processes | {} |", others.join(" | "));
    let _ = writeln!(out, "| stolen by the host | {} |\n", steal.join(" | "));
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
    let mut patches = c.patch_ms.clone();
    patches.sort_by(f64::total_cmp);
    let first = |samples: &[f64]| {
        let shown: Vec<String> = samples.iter().take(3).map(|v| format!("{v:.1}")).collect();
        shown.join(", ")
    };
    let _ = writeln!(
        out,
        "Of which the change's own PATCH (until the API server answered): p50 {:.1} ms, p99 {:.1} ms. \
         The first three changes after the idle window: {} ms (their PATCH: {} ms).\n",
        percentile(&patches, 0.5),
        percentile(&patches, 0.99),
        first(&c.samples_ms),
        first(&c.patch_ms),
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

/// Numbers joined with `, `.
fn join_f(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}
