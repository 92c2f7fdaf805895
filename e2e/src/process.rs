//! Helpers for long-lived child processes: watchdogs, signals and log tails.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Shell script run by each watchdog. Arguments: `$1` test process pid, `$2` child pid (may be
/// empty), `$3` pid file to read the child pid from at cleanup time (may be empty; used for
/// processes that are restarted, like postgres' `postmaster.pid`), `$4` directory to remove
/// (may be empty).
///
/// While the test process is alive it polls every 0.5 s; it exits early once it has nothing
/// left to do (child gone, no pid file, and no directory or the directory already removed by
/// `Drop`). Once the test process is gone it sends TERM to the child, then KILL after up to
/// 5 s, and finally removes the directory.
const WATCHDOG: &str = r#"
parent=$1 child=$2 pidfile=$3 dir=$4
while kill -0 "$parent" 2>/dev/null; do
  if [ -n "$child" ] && ! kill -0 "$child" 2>/dev/null; then
    child=
  fi
  if [ -z "$child" ] && [ -n "$dir" ] && [ ! -e "$dir" ]; then
    exit 0
  fi
  if [ -z "$child" ] && [ -z "$pidfile" ] && [ -z "$dir" ]; then
    exit 0
  fi
  sleep 0.5
done
if [ -z "$child" ] && [ -n "$pidfile" ] && [ -f "$pidfile" ]; then
  child=$(head -n 1 "$pidfile" 2>/dev/null)
  case $child in ''|*[!0-9]*) child= ;; esac
fi
if [ -n "$child" ]; then
  kill -TERM "$child" 2>/dev/null
  i=0
  while kill -0 "$child" 2>/dev/null && [ "$i" -lt 20 ]; do
    sleep 0.25
    i=$((i + 1))
  done
  kill -KILL "$child" 2>/dev/null
fi
if [ -n "$dir" ]; then
  rm -rf -- "$dir"
fi
"#;

/// Whether temp dirs should be kept for debugging (`COUNTERSIGN_E2E_KEEP_TMP` set non-empty).
pub(crate) fn keep_tmp() -> bool {
    std::env::var_os("COUNTERSIGN_E2E_KEEP_TMP").is_some_and(|v| !v.is_empty())
}

/// Starts a detached watchdog that kills `child_pid` and removes `dir` once this test process
/// has exited, even if no destructor ran (e.g. for statics, or when the process is killed).
///
/// The watchdog is double-forked (so it is reparented to init and never left as a zombie of
/// the test process), runs in its own process group (so Ctrl-C on the test does not kill it
/// before it has cleaned up) and has its stdio on /dev/null (so it never holds the test's
/// output pipes open).
pub(crate) fn spawn_watchdog(
    child_pid: Option<u32>,
    pid_file: Option<&Path>,
    dir: Option<&Path>,
) -> anyhow::Result<()> {
    let dir = if keep_tmp() { None } else { dir };
    if let Some(dir) = dir
        && !dir.is_absolute()
    {
        bail!("watchdog directory {} must be absolute", dir.display());
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"sh -c "$1" countersign-watchdog "$2" "$3" "$4" "$5" & "#)
        .arg("countersign-watchdog-launcher")
        .arg(WATCHDOG)
        .arg(std::process::id().to_string())
        .arg(child_pid.map(|p| p.to_string()).unwrap_or_default())
        .arg(pid_file.map(|p| p.as_os_str().to_owned()).unwrap_or_default())
        .arg(dir.map(|d| d.as_os_str().to_owned()).unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .status()
        .context("spawning watchdog shell (sh)")?;
    if !status.success() {
        bail!("watchdog launcher exited with {status}");
    }
    Ok(())
}

/// Opens (creating or appending) a log file to use as a child's stdout/stderr.
pub(crate) fn log_file(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log file {}", path.display()))?;
    let stderr = file
        .try_clone()
        .with_context(|| format!("duplicating log file handle {}", path.display()))?;
    Ok((Stdio::from(file), Stdio::from(stderr)))
}

/// Returns the last `lines` lines of the file at `path` (reading at most the last 256 KiB), or a
/// note that it could not be read.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 256 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("<could not read {}: {err}>", path.display()),
    }
}

/// Sends `signal` (a name such as `INT` or `KILL`) to `pid` using the `kill` utility.
pub(crate) fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} exited with {status}");
    }
    Ok(())
}

/// Kills a child with SIGKILL and reaps it, ignoring errors (it may already have exited).
pub(crate) fn kill_and_reap(child: &mut Child) {
    // `kill` fails only if the child was already reaped; either way `wait` then returns.
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `sig`, waits up to `grace` for the child to exit, then SIGKILLs it; always reaps.
pub(crate) fn terminate_and_reap(child: &mut Child, sig: &str, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if signal(child.id(), sig).is_ok() {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    kill_and_reap(child);
}
