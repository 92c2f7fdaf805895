#!/usr/bin/env bash
# Builds the release operator binary and runs the scale benchmark
# (e2e/benches/scale/) against it: a real kube-apiserver + etcd and
# PostgreSQL, the operator as separate `countersign run` processes.
# Every argument goes to the benchmark; `--help` lists them.
#
#   scripts/bench.sh                                  1000 Tenants, one operator
#   scripts/bench.sh --set mixed --objects 400        Tenants, IdPs, GroupMappings, webhooks
#   scripts/bench.sh --shards 2 --objects 400         two operators on disjoint selectors
#   scripts/bench.sh --operator-arg --some-new-flag=8 try an option of `countersign run`
#   scripts/bench.sh --objects 200 --json out.json    also write the numbers as JSON
#
# The markdown report goes to stdout, progress to stderr.
set -euo pipefail
# A relative --json path is taken from where the script was started.
export COUNTERSIGN_BENCH_CWD=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# No ensure_prerequisites: the image's musl toolchain is not needed here, and
# the harness finds (or, as root, installs) PostgreSQL itself.
command -v cargo >/dev/null 2>&1 || { echo "cargo (Rust) is required" >&2; exit 1; }

echo "==> control plane binaries" >&2
bash e2e/controlplane/build.sh >/dev/null
echo "==> building the release operator binary" >&2
cargo build --release --locked -p countersign-operator --bin countersign >&2
target=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
export COUNTERSIGN_BIN="$target/release/countersign"
echo "==> running the scale benchmark against $COUNTERSIGN_BIN" >&2
cargo bench --locked -p countersign-e2e --bench scale -- "$@"
