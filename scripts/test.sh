#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, CRD freshness, unit tests and
# the end-to-end tests against a real kube-apiserver, etcd and PostgreSQL.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh
ensure_prerequisites

cache=${COUNTERSIGN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/countersign}
# CI runs on a fresh clone each time: keep Cargo's artefacts beside the Go
# binaries in the cache so a rerun is incremental.
if [ -n "${CI:-}" ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
fi

echo "==> control plane binaries"
bash e2e/controlplane/build.sh
echo "==> operator image (the Containerfile, built without a container engine)"
image_out=${CARGO_TARGET_DIR:-$PWD/target}/image
scripts/image.sh --out "$image_out"
# e2e/tests/image.rs runs the binary from this root filesystem as the image's user.
export COUNTERSIGN_IMAGE_ROOTFS=$image_out/rootfs COUNTERSIGN_IMAGE_LAYOUT=$image_out/oci
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> CRD YAML freshness"
cargo run --quiet --locked -p countersign-crds --bin crdgen -- --check
echo "==> tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
echo "==> the README's bring-up command, once"
scripts/up.sh --once
# One closing line summing every test binary's result.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
