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
