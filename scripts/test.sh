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
# tests/browser/ drives headless Chromium through chromedriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (needed by the multi-server, alert-rule and browser tests)"
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

# The habits are enforced here, before any test: formatting, and clippy with warnings as errors
# (the workspace lints deny unwrap/expect/panic outside tests and unsafe code).
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  echo "== installing rustfmt and clippy"
  rustup component add rustfmt clippy
fi
echo "== formatting (cargo fmt --all --check)"
cargo fmt --all --check
echo "== lints (cargo clippy --workspace --all-targets -- -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

if ! cargo deny --version >/dev/null 2>&1; then
  echo "== cargo-deny missing: installing it"
  cargo install --locked cargo-deny
fi
# Duplicate versions, licences and sources (deny.toml). `advisories` is left out: it clones the
# RustSec database from GitHub, which this project's machines cannot reach.
echo "== dependency policy (cargo deny check bans licenses sources)"
cargo deny check bans licenses sources

if ! cargo machete --version >/dev/null 2>&1; then
  echo "== cargo-machete missing: installing it"
  cargo install --locked cargo-machete
fi
# A dependency no crate uses any more is build time for nothing. A false positive (a crate used
# only through a macro or a feature) goes in that crate's [package.metadata.cargo-machete] ignored.
echo "== unused dependencies (cargo machete)"
cargo machete

# The engine speaks no HTTP server: Cargo keeps the crates apart, and this keeps the engine's own
# dependency tree free of the web stack (docs/architecture.md).
echo "== the engine crate builds no HTTP stack (cargo tree -p learning-chat-engine -e normal)"
if cargo tree -p learning-chat-engine -e normal --prefix none | grep -E '^(axum|hyper|hyper-util|tower-http|reqwest) '; then
  echo "learning-chat-engine depends on the crates above; the HTTP stack belongs in learning-chat-http"
  exit 1
fi

echo "== running every test"
cargo nextest run --workspace --all-targets --no-fail-fast "$@"
echo "== doc tests"
cargo test --workspace --doc
