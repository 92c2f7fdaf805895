#!/usr/bin/env bash
# Builds the operator image from the Containerfile without a container engine
# (no Docker daemon, no registry access): the static musl binary is built on
# this machine, and e2e/controlplane/image assembles the Containerfile's final
# stage from it, the host's CA bundle and image/passwd, image/group.
#
#   scripts/image.sh [--out DIR]
#
# DIR (default: $CARGO_TARGET_DIR/image, else target/image) receives
#   oci/              the image as an OCI layout (e.g. skopeo copy oci:DIR/oci:dev ...)
#   countersign.tar   the same for `docker load -i` / `podman load -i`
#   rootfs/           its flattened root filesystem (what the tests run)
# and the image's digest and size are printed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
source scripts/lib.sh

target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
out=$target_dir/image
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (usage: scripts/image.sh [--out DIR])" >&2; exit 2 ;;
  esac
done
case $out in /*) ;; *) out=$root/$out ;; esac

ensure_prerequisites
triple=x86_64-unknown-linux-musl
# Idempotent, and a fraction of a second once the target is installed.
rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"

# The same command as the Containerfile's build stage (ring's C goes through
# musl-gcc, which the cc crate picks for this target).
CARGO_TARGET_DIR=$target_dir cargo build --release --locked --target "$triple" -p countersign-operator

bin=$(bash e2e/controlplane/build.sh countersign-image | tail -n 1)

# The build stage's filesystem, as far as the final stage reads it: the paths
# its COPY --from=build lines name.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/src/target/$triple/release" "$stage/etc/ssl/certs"
cp "$target_dir/$triple/release/countersign" "$stage/src/target/$triple/release/countersign"
cp /etc/ssl/certs/ca-certificates.crt "$stage/etc/ssl/certs/ca-certificates.crt"

mkdir -p "$out"
"$bin/countersign-image" \
  -containerfile Containerfile -context . -stage "build=$stage" \
  -layout "$out/oci" -docker-tar "$out/countersign.tar" -rootfs "$out/rootfs" \
  -tag countersign:dev
