//! The command line: the options, their defaults and their parsing.

use anyhow::{anyhow, bail, ensure};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) const USAGE: &str = "\
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
  --keep-logs           keep the run's directory (operator logs) after a successful run
";

/// Which objects the benchmark declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Set {
    /// Tenants only.
    Tenants,
    /// A quarter each of Tenants, IdentityProviders, GroupMappings and WebhookSubscriptions.
    Mixed,
}

/// The benchmark's options.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Args {
    /// Objects to converge.
    pub(crate) objects: usize,
    /// Which kinds.
    pub(crate) set: Set,
    /// Operator processes.
    pub(crate) shards: usize,
    /// Parallel requests of the appliers.
    pub(crate) concurrency: usize,
    /// The idle window.
    pub(crate) idle_seconds: u64,
    /// Sequential single changes.
    pub(crate) changes: usize,
    /// Drift attempts.
    pub(crate) drifts: usize,
    /// How long a drift may take to be corrected.
    pub(crate) drift_timeout_seconds: u64,
    /// The operator's drift-check interval.
    pub(crate) resync_seconds: u64,
    /// Extra arguments of `countersign run`.
    pub(crate) operator_args: Vec<String>,
    /// Limit of each wait.
    timeout_seconds: u64,
    /// Where to write the JSON results.
    #[serde(skip)]
    pub(crate) json: Option<PathBuf>,
    /// Keep the run's directory after a successful run.
    #[serde(skip)]
    pub(crate) keep_logs: bool,
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
            keep_logs: false,
        }
    }
}

impl Args {
    /// Parses `--flag value` and `--flag=value`; ignores the `--bench` cargo passes.
    pub(crate) fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<Option<Args>> {
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
                "--keep-logs" => args.keep_logs = true,
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
    pub(crate) fn timeout(&self) -> Duration {
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
