# Shared by scripts/up.sh and scripts/test.sh: installs what a fresh machine
# of this kind lacks, from Debian's packages and crates.io only.

ensure_prerequisites() {
  local missing=()
  command -v cargo >/dev/null 2>&1 || { echo "cargo (Rust) is required" >&2; exit 1; }
  command -v go >/dev/null 2>&1 || { echo "Go (1.26+) is required to build kube-apiserver and etcd" >&2; exit 1; }
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
  command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  # The operator image: ring needs a musl C compiler for the static binary,
  # and the image carries the host's CA bundle.
  command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
  [ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "==> installing ${missing[*]} from Debian's packages"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "please install: ${missing[*]}" >&2
      exit 1
    fi
  fi
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
}
