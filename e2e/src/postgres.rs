//! A private PostgreSQL server running as a local child process.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

use crate::ports::{free_port, port_open};
use crate::process::{keep_tmp, log_file, log_tail, signal, spawn_watchdog, terminate_and_reap};

/// Where distribution packages install server binaries (`/usr/lib/postgresql/<version>/bin`).
const PG_LIB: &str = "/usr/lib/postgresql";
/// How long to wait for the server to accept connections or to shut down.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Number of log lines included in errors.
const TAIL_LINES: usize = 40;
/// The superuser created by initdb (trust authentication, no password).
const SUPERUSER: &str = "postgres";

/// A PostgreSQL server of its own: fresh cluster in a temp dir, listening on a free port on
/// 127.0.0.1 (TCP, trust authentication, user `postgres`, no password) with `fsync=off`.
///
/// When running as root the server runs as the `postgres` user (or `nobody`), since postgres
/// refuses to run as root. Dropping the value stops the server and removes the directory; if
/// the test process exits without running destructors (e.g. the value is in a `static`),
/// a watchdog process does the same. `COUNTERSIGN_E2E_KEEP_TMP=1` keeps the directory.
///
/// The value holds no async-runtime resources and can be shared between tests. Don't
/// [`stop`](Self::stop) a server other tests are using; start a private one for that.
pub struct Postgres {
    child: Mutex<Option<Child>>,
    port: u16,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    data: PathBuf,
    // Declared last so it is removed after the server is stopped.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("port", &self.port)
            .field("bin", &self.bin)
            .field("run_as", &self.run_as)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// Creates a new cluster with `initdb` and starts the server, returning once it accepts
    /// connections.
    ///
    /// Binaries come from `COUNTERSIGN_PG_BIN` if set, else the highest version under
    /// `/usr/lib/postgresql/*/bin`; if there is none and we are root, the `postgresql` package
    /// is installed with apt-get.
    pub async fn start() -> anyhow::Result<Postgres> {
        let (bin, run_as) =
            tokio::task::spawn_blocking(|| -> anyhow::Result<_> { Ok((find_bin_dir()?, run_as_ids()?)) })
                .await
                .context("postgres setup task panicked")??;

        let mut dir = tempfile::Builder::new()
            .prefix("countersign-pg-")
            .tempdir()
            .context("creating postgres temp dir")?;
        if keep_tmp() {
            dir.disable_cleanup(true);
            eprintln!("countersign-e2e: keeping postgres dir {}", dir.path().display());
        }
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .with_context(|| format!("chowning {} to {uid}:{gid}", dir.path().display()))?;
        }
        let data = dir.path().join("data");
        spawn_watchdog(None, Some(&data.join("postmaster.pid")), Some(dir.path()))?;

        let mut pg = Postgres {
            child: Mutex::new(None),
            port: free_port(),
            bin,
            run_as,
            data,
            dir,
        };
        pg.initdb().await?;
        let mut attempt = 1;
        loop {
            match pg.start_again().await {
                Ok(()) => return Ok(pg),
                Err(err) if attempt < 3 && format!("{err:#}").contains("already in use") => {
                    tracing::warn!(attempt, port = pg.port, "postgres port clash, retrying");
                    attempt += 1;
                    pg.port = free_port();
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir holding the data directory (`data/`) and the server log (`postgres.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of the server log (for diagnostics).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Connection URL for `database` as the superuser, e.g.
    /// `postgres://postgres@127.0.0.1:54321/mydb`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a uniquely named, empty database and returns its URL.
    pub async fn create_database(&self) -> anyhow::Result<String> {
        let name = create_unique_database(&self.url("postgres")).await?;
        Ok(self.url(&name))
    }

    /// Whether the server process is currently running (started and not stopped or crashed).
    pub fn is_running(&self) -> bool {
        match self.lock().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the server with a fast shutdown (SIGINT: active transactions are rolled back and
    /// clients disconnected) and waits until the process has exited and the port is closed.
    /// Open connections see errors; pools reconnect after [`start_again`](Self::start_again).
    pub async fn stop(&self) -> anyhow::Result<()> {
        let pid = match self.lock().as_ref() {
            Some(child) => child.id(),
            None => bail!("postgres on port {} is not running", self.port),
        };
        // Fails only if the process is already gone, which the loop below detects.
        let _ = signal(pid, "INT");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            {
                let mut guard = self.lock();
                let exited = match guard.as_mut() {
                    Some(child) => child.try_wait().context("polling postgres")?.is_some(),
                    None => true,
                };
                if exited {
                    *guard = None;
                    break;
                }
                if Instant::now() > deadline {
                    if let Some(mut child) = guard.take() {
                        terminate_and_reap(&mut child, "KILL", Duration::ZERO);
                    }
                    bail!(
                        "postgres did not shut down within {TIMEOUT:?} (killed); log tail:\n{}",
                        self.log_tail(TAIL_LINES)
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while port_open(self.port) {
            if Instant::now() > deadline {
                bail!("port {} still open after postgres exited", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Starts the server again (same port, same data) after [`stop`](Self::stop), returning
    /// once it accepts connections. Fails if it is running.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        {
            let mut guard = self.lock();
            if let Some(child) = guard.as_mut()
                && child.try_wait().context("polling postgres")?.is_none()
            {
                bail!("postgres on port {} is already running", self.port);
            }
            let (stdout, stderr) = log_file(&self.log_path())?;
            let child = self
                .command(&self.bin.join("postgres"))
                .arg("-D")
                .arg(&self.data)
                .arg("-k")
                .arg(self.dir.path())
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-h")
                .arg("127.0.0.1")
                .args(["-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"])
                .args(["-c", "max_connections=300"])
                .current_dir(self.dir.path())
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .context("spawning postgres")?;
            *guard = Some(child);
        }
        self.wait_ready().await
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command running `program` as the server user (via `setpriv` when we are root).
    fn command(&self, program: &Path) -> Command {
        match self.run_as {
            Some((uid, gid)) => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    async fn initdb(&self) -> anyhow::Result<()> {
        let mut cmd = self.command(&self.bin.join("initdb"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .context("initdb task panicked")?
            .context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed with {}:\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = self.url("postgres");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            {
                let mut guard = self.lock();
                let child = guard.as_mut().ok_or_else(|| anyhow!("postgres is not running"))?;
                if let Some(status) = child.try_wait().context("polling postgres")? {
                    *guard = None;
                    bail!(
                        "postgres exited during startup with {status}; log tail:\n{}",
                        self.log_tail(TAIL_LINES)
                    );
                }
            }
            let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                let mut conn = PgConnection::connect(&url).await?;
                sqlx::query("SELECT 1").execute(&mut conn).await?;
                conn.close().await
            })
            .await;
            match attempt {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(err)) if Instant::now() > deadline => {
                    bail!(
                        "postgres not ready within {TIMEOUT:?} ({err}); log tail:\n{}",
                        self.log_tail(TAIL_LINES)
                    )
                }
                Err(_) if Instant::now() > deadline => {
                    bail!(
                        "postgres not ready within {TIMEOUT:?} (connect timed out); log tail:\n{}",
                        self.log_tail(TAIL_LINES)
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut child) = child.take() {
            // SIGINT = fast shutdown; KILL if it takes longer than 5 s.
            terminate_and_reap(&mut child, "INT", Duration::from_secs(5));
        }
    }
}

/// Connects to `admin_url`, creates a database with a unique name and returns the name.
pub(crate) async fn create_unique_database(admin_url: &str) -> anyhow::Result<String> {
    let name = format!("countersign_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("connecting to {}", redact(admin_url)))?;
    sqlx::raw_sql(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .execute(&mut conn)
        .await
        .with_context(|| format!("creating database {name}"))?;
    conn.close().await.context("closing admin connection")?;
    Ok(name)
}

/// Returns `url` with its database (path) replaced by `database`, keeping credentials, host and
/// query parameters.
pub(crate) fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let scheme_end = url
        .find("://")
        .ok_or_else(|| anyhow!("database URL has no scheme: {}", redact(url)))?
        + 3;
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let after = &rest[authority_end..];
    let query = after.find(['?', '#']).map_or("", |i| &after[i..]);
    Ok(format!(
        "{}{}/{database}{query}",
        &url[..scheme_end],
        &rest[..authority_end]
    ))
}

/// `url` with any password replaced by `***`, for error messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return "<unparseable URL>".to_owned();
    };
    let rest = &url[scheme_end..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &authority[..colon],
                &url[scheme_end + at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The PostgreSQL server binary directory.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("COUNTERSIGN_PG_BIN").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if !dir.join("postgres").is_file() {
            bail!("COUNTERSIGN_PG_BIN={} has no postgres binary", dir.display());
        }
        return Ok(dir);
    }
    if let Some(dir) = scan_pg_lib() {
        return Ok(dir);
    }
    if !is_root() {
        bail!(
            "PostgreSQL server binaries not found under {PG_LIB}/*/bin; install the `postgresql` \
             package, set COUNTERSIGN_PG_BIN to the directory holding `postgres` and `initdb`, \
             or set DATABASE_URL to use an existing server"
        );
    }
    eprintln!("countersign-e2e: installing PostgreSQL with apt-get (no {PG_LIB}/*/bin found)");
    for args in [&["update"][..], &["install", "-y", "postgresql"][..]] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed with {status}", args.join(" "));
        }
    }
    scan_pg_lib().ok_or_else(|| anyhow!("installed postgresql but found no {PG_LIB}/*/bin"))
}

/// The `bin` dir of the highest version under `/usr/lib/postgresql` that has `postgres` and
/// `initdb`.
fn scan_pg_lib() -> Option<PathBuf> {
    let entries = std::fs::read_dir(PG_LIB).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            (bin.join("postgres").is_file() && bin.join("initdb").is_file()).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// Whether this process runs with effective uid 0 (`/proc/self` is owned by the euid).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").map_or_else(
        |_| {
            Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        },
        |m| m.uid() == 0,
    )
}

/// When root: uid and gid of `postgres` (or `nobody`) to run the server as; else `None`.
fn run_as_ids() -> anyhow::Result<Option<(u32, u32)>> {
    if !is_root() {
        return Ok(None);
    }
    for user in ["postgres", "nobody"] {
        if let (Some(uid), Some(gid)) = (id_of(user, "-u"), id_of(user, "-g")) {
            return Ok(Some((uid, gid)));
        }
    }
    bail!("running as root, but neither a `postgres` nor a `nobody` user exists to run postgres")
}

fn id_of(user: &str, flag: &str) -> Option<u32> {
    let output = Command::new("id")
        .arg(flag)
        .arg(user)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::{redact, with_database};

    #[test]
    fn replaces_database() {
        let cases = [
            ("postgres://u:p@h:5432/db", "postgres://u:p@h:5432/new"),
            ("postgres://u@h", "postgres://u@h/new"),
            ("postgres://h/db?sslmode=disable", "postgres://h/new?sslmode=disable"),
            ("postgresql://h:1/?x=1", "postgresql://h:1/new?x=1"),
        ];
        for (url, want) in cases {
            assert_eq!(with_database(url, "new").expect("valid url"), want, "{url}");
        }
    }

    #[test]
    fn redacts_password() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
