//! The ceiling of the audit log: how many entries per second can be appended
//! when every write transaction chains its entry under the one advisory lock,
//! with 1, 4, 16 and 32 writers at once (each in its own transaction, as the
//! reconciles append them).
//!
//!     cargo bench -p countersign-e2e --bench audit_append
//!
//! The harness's PostgreSQL runs with fsync and synchronous_commit off; on a
//! server that flushes each commit, the lock is also held for the flush and
//! the ceiling is lower by about one flush per entry.

#[path = "../tests/common/mod.rs"]
mod common;

use countersign_reconcilers::audit::{Entry, append};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long each concurrency level runs.
const RUN: Duration = Duration::from_secs(5);
/// The numbers of writers tried.
const WRITERS: [usize; 4] = [1, 4, 16, 32];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (url, _owner) = common::database().await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(40)
        .connect(&url)
        .await?;
    let key = Arc::new(common::test_key());
    println!("| writers | appends/s | per writer/s |");
    println!("|---:|---:|---:|");
    for writers in WRITERS {
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (pool, key, done) = (pool.clone(), key.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < RUN {
                    let mut tx = pool.begin().await?;
                    let entry = Entry::now("Tenant", &format!("bench-{w}-{n}"), "create", "countersign");
                    append(&mut tx, key.audit_chain_key(), &entry).await?;
                    tx.commit().await?;
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        println!("| {writers} | {rate:.0} | {:.0} |", rate / writers as f64);
    }
    let broken = countersign_reconcilers::audit::verify(&pool, key.audit_chain_key()).await?;
    anyhow::ensure!(
        broken.broken.is_none(),
        "the chain must stay intact: {:?}",
        broken.broken
    );
    Ok(())
}
