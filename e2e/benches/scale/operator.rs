//! The operator processes: starting, scraping, measuring and stopping `countersign run`, one per shard.

use crate::common;
use crate::metrics::parse_labels;
use crate::objects::{BENCH_LABEL, KEY_SECRET, SHARD_LABEL};
use crate::util::progress;
use anyhow::{Context as _, anyhow, bail, ensure};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How every operator process is started.
pub(crate) struct OperatorSpec {
    /// The release `countersign` binary.
    pub(crate) bin: PathBuf,
    /// A kubeconfig with a token of the chart's ServiceAccount.
    pub(crate) kubeconfig: PathBuf,
    /// The runtime role's database URL.
    pub(crate) database_url: String,
    /// Where the logs go.
    pub(crate) log_dir: PathBuf,
    /// The run id (the value of [`BENCH_LABEL`]).
    pub(crate) run: String,
    /// CA files the outbound calls trust (the stub IdP's, the receiver's).
    pub(crate) ca_files: Vec<PathBuf>,
    /// `--resync-seconds`.
    pub(crate) resync_seconds: u64,
    /// Extra arguments.
    pub(crate) extra: Vec<String>,
}

/// The operator's own counters, from its `/metrics`.
#[derive(Clone, Debug, Default)]
pub(crate) struct OperatorMetrics {
    /// `countersign_reconciles_total`, every kind and result.
    pub(crate) reconciles: f64,
    /// `countersign_reconcile_errors_total` by `kind/reason`.
    pub(crate) errors: BTreeMap<String, f64>,
    /// `countersign_leader`.
    leading: bool,
}

/// One `countersign run` child process; killed when dropped.
pub(crate) struct Operator {
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
    pub(crate) async fn terminate(&mut self, grace: Duration) -> anyhow::Result<Duration> {
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
pub(crate) fn clock_ticks() -> f64 {
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
pub(crate) struct Fleet {
    /// How they are started.
    pub(crate) spec: OperatorSpec,
    /// The running processes, by shard.
    pub(crate) operators: Vec<Operator>,
    /// How many times they were started.
    starts: usize,
}

impl Fleet {
    /// Starts `shards` operators and waits until each runs its controllers.
    pub(crate) async fn start(spec: OperatorSpec, shards: usize, timeout: Duration) -> anyhow::Result<Fleet> {
        let mut fleet = Fleet {
            spec,
            operators: Vec::new(),
            starts: 0,
        };
        fleet.start_all(shards, timeout).await?;
        Ok(fleet)
    }

    /// Starts every shard; returns how long until each ran its controllers.
    pub(crate) async fn start_all(&mut self, shards: usize, timeout: Duration) -> anyhow::Result<Vec<Duration>> {
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
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        self.operators.iter_mut().try_for_each(Operator::check_alive)
    }

    /// Every operator's metrics, by shard.
    pub(crate) async fn metrics(&self) -> anyhow::Result<Vec<OperatorMetrics>> {
        let mut out = Vec::new();
        for op in &self.operators {
            out.push(op.metrics().await?);
        }
        Ok(out)
    }

    /// Every operator's CPU seconds, by shard.
    pub(crate) fn cpu(&self) -> anyhow::Result<Vec<f64>> {
        self.operators.iter().map(Operator::cpu_seconds).collect()
    }

    /// Every operator's RSS in KiB, by shard (0 when unreadable).
    pub(crate) fn rss(&self) -> Vec<u64> {
        self.operators.iter().map(|o| o.rss_kib().unwrap_or(0)).collect()
    }

    /// The sum of the reconcile counters.
    pub(crate) async fn reconciles(&self) -> anyhow::Result<f64> {
        Ok(self.metrics().await?.iter().map(|m| m.reconciles).sum())
    }
}

/// Writes a kubeconfig for the operators: the admin's cluster entry with
/// `token`, a token of the chart's ServiceAccount from the TokenRequest API,
/// as a pod's would be. The API server authenticates every request by that
/// token and its RBAC judges it by the chart's ClusterRole, as in
/// production and `scripts/up.sh`. (Impersonation, which the e2e tests use,
/// would add an authorization check per impersonated name to every request.)
pub(crate) fn write_operator_kubeconfig(admin: &Path, token: &str, out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(admin).with_context(|| format!("reading {}", admin.display()))?;
    let mut config: Value = serde_norway::from_str(&text).context("parsing the admin kubeconfig")?;
    let users = config
        .get_mut("users")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| anyhow!("the admin kubeconfig has no users"))?;
    for user in users {
        user["user"] = json!({ "token": token });
    }
    // JSON is YAML: kube reads it as a kubeconfig.
    std::fs::write(out, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// The release binary: `COUNTERSIGN_BIN`, else `<target>/release/countersign`.
pub(crate) fn operator_binary() -> anyhow::Result<PathBuf> {
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
