#!/usr/bin/env bash
# Builds the pinned kube-apiserver, kubectl, etcd and helm from their Go modules into the
# cache (default ~/.cache/countersign, override with COUNTERSIGN_CACHE), and
# reuses binaries already built for the same pinned versions.
# Prints the directory holding the binaries on its last line.
# With arguments (e.g. `build.sh countersign-image`), builds only those
# binaries (scripts/image.sh needs no control plane).
set -euo pipefail
only=" $* "
wanted() { [ "$only" = "  " ] || [[ "$only" == *" $1 "* ]]; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${COUNTERSIGN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/countersign}
kube_version=v1.36.3
etcd_version=v3.6.16
bin="$cache/bin/kube-$kube_version-etcd-$etcd_version"
mkdir -p "$bin" "$cache/go/mod" "$cache/go/build"

export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" CGO_ENABLED=0 GOFLAGS=-mod=readonly
export GOTOOLCHAIN=local

if ! command -v go >/dev/null 2>&1; then
  echo "go is required to build the control plane (apt-get install golang or use the machine's Go)" >&2
  exit 1
fi

if wanted etcd && [ ! -x "$bin/etcd" ]; then
  echo "building etcd $etcd_version (first run only)" >&2
  (cd "$here/etcd" && go build -trimpath -o "$bin/etcd.tmp" . && mv "$bin/etcd.tmp" "$bin/etcd")
fi

# Builds one command of the pinned k8s.io/kubernetes module, stamped with its
# version so clients do not see v0.0.0.
build_kube() {
  local cmd=$1 minor pkg ldflags
  wanted "$cmd" || return 0
  [ -x "$bin/$cmd" ] && return 0
  echo "building $cmd $kube_version (first run only)" >&2
  minor=${kube_version#v1.}; minor=${minor%%.*}
  pkg=k8s.io/component-base/version
  ldflags="-s -w -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  (cd "$here/kube-apiserver" &&
    go build -trimpath -ldflags "$ldflags" -o "$bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" &&
    mv "$bin/$cmd.tmp" "$bin/$cmd")
}
build_kube kube-apiserver
build_kube kubectl

# Builds a tool from one of the Go modules beside this script, into a folder
# named after the hash of that module's go.mod and sources, so a change to
# the pin (or to our own Go code) rebuilds it and nothing else does.
build_tool() {
  local name=$1 dir=$2 pkg=$3 sum out
  wanted "$name" || return 0
  sum=$(cd "$here/$dir" && cat go.mod go.sum $(ls ./*.go 2>/dev/null) | sha256sum | cut -c1-16)
  out="$cache/bin/$dir-$sum"
  mkdir -p "$out"
  if [ ! -x "$out/$name" ]; then
    echo "building $name from e2e/controlplane/$dir (first run only)" >&2
    (cd "$here/$dir" && go build -trimpath -ldflags "-s -w" -o "$out/$name.tmp" "$pkg" && mv "$out/$name.tmp" "$out/$name")
  fi
  ln -sf "$out/$name" "$bin/$name"
}
build_tool helm helm helm.sh/helm/v3/cmd/helm
build_tool countersign-health health countersign.dev/e2e/health
build_tool countersign-image image countersign.dev/e2e/image

echo "$bin"
