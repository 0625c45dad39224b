#!/usr/bin/env bash
# Installs what the tests need (Debian packages; run as root) and runs every test.
# Used by .ci/run and by developers: `bash scripts/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin:$HOME/.cargo/bin"

# tool → Debian package
declare -A packages=(
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [umoci]=umoci
  [podman]=podman
  [runc]=runc
  [qemu-aarch64-static]=qemu-user-static
  [tmux]=tmux
  [curl]=curl
  [git]=git
  [openssl]=openssl
  [python3]=python3
)
missing=()
for tool in "${!packages[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${packages[$tool]}")
done
command -v go >/dev/null 2>&1 || missing+=(golang-go)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (install Rust with rustup)"; exit 1; }

go version
cargo --version
df -h . | tail -1 | awk '{print "disk free here: " $4}'

# Every test's scratch files (and go's work directories) go under one directory,
# removed at the end even if a test process died without cleaning up.
# (Lowercase on purpose: podman names images after paths under it.)
TMPDIR="${TMPDIR:-/tmp}/kodev-tests-$$-$(date +%s)"
mkdir -p "$TMPDIR"
export TMPDIR
trap 'rm -rf "$TMPDIR" || true' EXIT
# Incremental compilation only helps repeated builds; a test run builds once.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets 2>&1
