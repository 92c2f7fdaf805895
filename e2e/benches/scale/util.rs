//! Small generic helpers: progress lines, bounded concurrency without extra crates, locks and streams.

use anyhow::Context as _;
use kube::runtime::WatchStreamExt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;
use tokio::task::JoinSet;

/// Prints a progress line on stderr, with the seconds since the start.
pub(crate) fn progress(message: impl std::fmt::Display) {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("[bench {:>7.1}s] {message}", start.elapsed().as_secs_f64());
}

/// Runs `f` on every item with at most `concurrency` at a time; the first
/// error stops the rest (the remaining tasks are aborted).
pub(crate) async fn for_each_concurrent<T, F, Fut>(items: Vec<T>, concurrency: usize, f: F) -> anyhow::Result<()>
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
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The next item of a stream. The e2e crate has no `futures` dependency (and
/// adding one would change Cargo.lock); kube's `WatchStreamExt` is a subtrait
/// of `Stream`, which is enough to poll it.
pub(crate) async fn next_item<S>(stream: &mut S) -> Option<S::Item>
where
    S: WatchStreamExt + Unpin,
{
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

/// `v` with a negative zero (an empty sum) made positive, for printing.
pub(crate) fn z(v: f64) -> f64 {
    if v == 0.0 { 0.0 } else { v }
}

/// The processes of the stack whose CPU the benchmark reports, by the name
/// their `/proc/<pid>/stat` gives.
pub(crate) const STACK: [&str; 4] = ["kube-apiserver", "etcd", "postgres", "countersign"];

/// CPU seconds (user + system) used so far by each of [`STACK`] (all
/// processes of that name; PostgreSQL's backends that have exited count in
/// their parent) and by this benchmark (`benchmark`). Read before and after
/// a phase, the difference says where the machine's two cores went.
pub(crate) fn stack_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut cpu: std::collections::BTreeMap<String, f64> = STACK
        .iter()
        .chain(&["benchmark"])
        .map(|n| (n.to_string(), 0.0))
        .collect();
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return cpu;
    };
    for entry in entries.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name may hold spaces: it is what lies between the
        // first `(` and the last `)`; the numbered fields follow.
        let (Some(open), Some((head, rest))) = (stat.find('('), stat.rsplit_once(')')) else {
            continue;
        };
        let name = if pid == me { "benchmark" } else { &head[open + 1..] };
        let Some(total) = cpu.get_mut(name) else { continue };
        let fields: Vec<f64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0.0)).collect();
        // utime, stime (fields 14, 15; `fields` starts at field 3), and for
        // PostgreSQL cutime, cstime: its exited backends. The benchmark's
        // own children are the operators, counted by their name.
        let last = if name == "postgres" { 15 } else { 13 };
        let ticks: f64 = fields.get(11..last).map(|f| f.iter().sum()).unwrap_or(0.0);
        *total += ticks / crate::operator::clock_ticks();
    }
    if let Some((busy, steal)) = machine_cpu() {
        cpu.insert(MACHINE_BUSY.to_owned(), busy);
        cpu.insert(HOST_STEAL.to_owned(), steal);
    }
    cpu
}

/// The key of [`stack_cpu`] holding the CPU seconds every process of the
/// machine used (the stack's, the benchmark's and any other's).
pub(crate) const MACHINE_BUSY: &str = "(machine, all processes)";

/// The key of [`stack_cpu`] holding the CPU seconds the hypervisor ran
/// something else while this machine's processes were ready to run: a
/// phase slowed by a busy host shows it here, not in its own processes.
pub(crate) const HOST_STEAL: &str = "(stolen by the host)";

/// Busy and stolen CPU seconds of the whole machine so far (`/proc/stat`:
/// user, nice, system, irq, softirq; steal).
fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| ticks.get(i).copied().unwrap_or(0.0))
        .sum::<f64>();
    let steal = ticks.get(7).copied().unwrap_or(0.0);
    let hz = crate::operator::clock_ticks();
    Some((busy / hz, steal / hz))
}

/// `after - before`, by name.
pub(crate) fn cpu_between(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}
