#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: installs what the tests need, then the suite.
# Usage: ./scripts/test.sh [extra cargo-nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# tests/service/h2c.rs and tls.rs drive the server with `curl --http2-prior-knowledge` too.
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (needed by the multi-server and alert-rule tests)"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  # Debian starts services on install; the tests run their own instances on free ports instead.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_apt[@]}" \
    || { $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_apt[@]}"; }
  $sudo rm -f /usr/sbin/policy-rc.d
fi
command -v redis-server >/dev/null 2>&1 || { echo "redis-server is required (apt-get install redis-server)"; exit 1; }

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== cargo-nextest missing: installing it"
  cargo install --locked cargo-nextest
fi

echo "== running every test"
cargo nextest run --workspace --all-targets --no-fail-fast "$@"
echo "== doc tests"
cargo test --workspace --doc
