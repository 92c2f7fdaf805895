//! End-to-end test harness for Countersign.
//!
//! Provides real dependencies as local child processes, with no containers or cluster needed:
//!
//! - [`ControlPlane`]: a pinned kube-apiserver + etcd (built from Go modules by
//!   `e2e/controlplane/build.sh` and cached), RBAC on, an admin client and impersonating
//!   clients ([`ControlPlane::client_as`]).
//! - [`Postgres`]: a private PostgreSQL server that can be stopped and started again.
//! - [`shared_control_plane`] / [`shared_postgres`]: one instance per test process, usable from
//!   any number of `#[tokio::test]`s (each with its own runtime).
//! - [`test_database_url`]: a fresh database, on `DATABASE_URL`'s server if set.
//! - [`free_port`] and [`unique_name`].
//! - [`stub_idp::StubIdp`]: a local HTTPS OIDC/SAML identity provider whose answers a test can
//!   change, for the operator's outbound checks.
//! - [`webhook_receiver::WebhookReceiver`]: a local HTTPS endpoint that checks and records signed
//!   webhook deliveries.
//!
//! Child processes die and temp dirs are removed when the owning value is dropped, and — via
//! watchdog processes — also when the test process exits without running destructors.
//! Set `COUNTERSIGN_E2E_KEEP_TMP=1` to keep temp dirs (logs) for debugging.

pub mod certs;
mod controlplane;
mod loopback_tls;
mod ports;
mod postgres;
mod process;
pub mod stub_idp;
pub mod webhook_receiver;

use std::future::Future;
use std::sync::OnceLock;

pub use controlplane::{ControlPlane, tools_dir};
pub use ports::free_port;
pub use postgres::Postgres;

/// `prefix` + `-` + 8 random lowercase hex characters, usable as a Kubernetes object name
/// (DNS-1123 label, at most 63 characters).
///
/// The prefix is lowercased; characters other than `a-z`, `0-9` and `-` become `-`, leading
/// and trailing dashes are dropped and it is truncated so the result fits in 63 characters. An
/// empty prefix becomes `t`, so the name always starts with a letter (DNS-1035 valid) when the
/// prefix does.
pub fn unique_name(prefix: &str) -> String {
    let mut clean: String = prefix
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(63 - 9)
        .collect();
    clean = clean.trim_matches('-').to_owned();
    if clean.is_empty() {
        clean.push('t');
    }
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{clean}-{}", &suffix[..8])
}

/// The control plane shared by all tests of this test process, started on first use.
///
/// Startup runs once, on a dedicated thread with its own tokio runtime, so the instance does
/// not depend on any test's runtime. Create clients per test with [`ControlPlane::client`].
///
/// # Panics
///
/// Panics (in every caller) if the control plane failed to start, with the error.
pub async fn shared_control_plane() -> &'static ControlPlane {
    static CELL: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    shared(&CELL, "control plane", ControlPlane::start).await
}

/// The PostgreSQL server shared by all tests of this test process, started on first use.
///
/// Use [`Postgres::create_database`] (or [`test_database_url`]) to get an isolated database.
/// Don't stop it; use a private [`Postgres::start`] to test outages.
///
/// # Panics
///
/// Panics (in every caller) if the server failed to start, with the error.
pub async fn shared_postgres() -> &'static Postgres {
    static CELL: OnceLock<Result<Postgres, String>> = OnceLock::new();
    shared(&CELL, "postgres", Postgres::start).await
}

/// URL of a freshly created, empty database.
///
/// If `DATABASE_URL` is set, the database is created on that server (connecting with that URL,
/// which must allow `CREATE DATABASE`) and the returned URL is `DATABASE_URL` with the database
/// name replaced. Otherwise it is created on [`shared_postgres`].
pub async fn test_database_url() -> anyhow::Result<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            let name = postgres::create_unique_database(&url).await?;
            postgres::with_database(&url, &name)
        }
        _ => shared_postgres().await.create_database().await,
    }
}

/// Returns the value in `cell`, initializing it with `start` run to completion on a fresh
/// thread with its own current-thread runtime. Concurrent callers wait (off their runtime's
/// worker thread) for the single initialization.
async fn shared<T, F, Fut>(cell: &'static OnceLock<Result<T, String>>, what: &'static str, start: F) -> &'static T
where
    T: Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let result = match cell.get() {
        Some(result) => result,
        None => tokio::task::spawn_blocking(move || {
            cell.get_or_init(|| {
                let thread = std::thread::Builder::new()
                    .name(format!("countersign-e2e-{what}"))
                    .spawn(move || {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(|err| format!("building tokio runtime: {err}"))?;
                        runtime.block_on(start()).map_err(|err| format!("{err:#}"))
                    });
                match thread {
                    Ok(handle) => handle
                        .join()
                        .unwrap_or_else(|_| Err(format!("starting the shared {what} panicked"))),
                    Err(err) => Err(format!("spawning the {what} startup thread: {err}")),
                }
            })
        })
        .await
        .unwrap_or_else(|err| panic!("waiting for the shared {what} failed: {err}")),
    };
    match result {
        Ok(value) => value,
        Err(err) => panic!("the shared {what} failed to start: {err}"),
    }
}
