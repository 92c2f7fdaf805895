//! How long an approval takes to go live: from the approving annotation being
//! accepted by the API server to the row appearing in the API database, over
//! 20 Tenants created by GitOps and approved by a second person.
//!
//!     cargo bench -p countersign-e2e --bench approval_latency

#[path = "../tests/common/mod.rs"]
mod common;

use common::approvals::Stack;
use std::time::{Duration, Instant};

const RUNS: usize = 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut samples = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let name = countersign_e2e::unique_name(&format!("latency-{i}"));
        stack.gitops_create(&name, "carol@example.com").await?;
        let waiting = stack.awaiting(&name).await?;
        let digest = waiting.status.and_then(|s| s.pending_digest).unwrap_or_default();
        let started = Instant::now();
        stack.approve(&name, "bob", &digest).await?;
        loop {
            if !stack.rows(&name).await?.is_empty() {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "approval of {name} never went live"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "approval → live over {RUNS} runs: median {:.1} ms, p90 {:.1} ms, worst {:.1} ms, best {:.1} ms",
        ms(samples[RUNS / 2]),
        ms(samples[RUNS * 9 / 10]),
        ms(samples[RUNS - 1]),
        ms(samples[0])
    );
    stack.op.shutdown().await;
    Ok(())
}
