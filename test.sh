#!/usr/bin/env bash
# Runs every test Herald has, installing what they need first. CI runs exactly this (.ci/run).
#   ./test.sh
set -euo pipefail
cd "$(dirname "$0")"
# A fresh clone gains nothing from incremental caches, and they double the debug target's size
# on disk (15 GB of 27 here); whoever wants them sets CARGO_INCREMENTAL=1.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

need_apt=()
command -v cargo >/dev/null || { echo "test.sh: cargo is missing: install Rust (https://rustup.rs)" >&2; exit 1; }
# The protocol goldens are checked against their JSON Schemas with Python's jsonschema.
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
# The TLS tests make their certificate with the openssl command.
command -v openssl >/dev/null || need_apt+=(openssl)
# The cluster tests start their own redis-server (and use redis-cli as a backend would).
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v redis-cli >/dev/null || need_apt+=(redis-tools)
# A test reads the listener's backlog with ss.
command -v ss >/dev/null || need_apt+=(iproute2)
# The browser tests (the dashboard's, the demo's) drive Debian's chromium with playwright-core.
command -v chromium >/dev/null || need_apt+=(chromium)
# The JavaScript client's tests run on Node's test runner (Node 20+; Debian's nodejs when missing).
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${need_apt[@]}";
    else sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}"; fi
fi
python3 -c 'import jsonschema' 2>/dev/null || python3 -m pip install -q jsonschema
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "== deployment files: docker-compose.yml (docker-compose config), deploy/haproxy.cfg (haproxy -c)"
# No container engine is needed to validate them; both tools come from Debian's packages.
need_apt=()
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
command -v haproxy >/dev/null || need_apt+=(haproxy)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${need_apt[@]}";
    else sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}"; fi
fi
HERALD_JWT_SECRET=validate HERALD_API_KEY=validate docker-compose -f docker-compose.yml config -q
haproxy -c -q -f deploy/haproxy.cfg

echo "== protocol goldens against their schemas"
python3 proto/check_goldens.py

echo "== WebSocket conformance: the Autobahn cases (kosoku) against Herald's own framing"
tests/conformance/autobahn.sh

echo "== fuzzing smoke: each cargo-fuzz target for 20 s, seeded from proto/golden (fuzz/run.sh)"
fuzz/run.sh 20

echo "== JavaScript client (clients/js): node --test against real herald and redis-server processes"
cargo build --locked --bin herald
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
(cd clients/js && npm ci --no-audit --no-fund && HERALD_BIN="$target_dir/debug/herald" npm test)

echo "== the browser demo (examples/backend) in headless Chromium, against deploy/local-cluster.sh"
command -v chromium >/dev/null || {
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium;
    else sudo apt-get update -qq && sudo apt-get install -y -qq chromium; fi
}
cargo build --locked --bin herald-example-backend
(cd examples/backend/browser && npm ci --no-audit --no-fund \
    && HERALD_BIN="$target_dir/debug/herald" BACKEND_BIN="$target_dir/debug/herald-example-backend" npm test)

echo "== unit, property and integration tests (benches are compiled by clippy above)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked 2>&1 | tee "$log" || status=$?

echo "== the dashboard in a real browser: two nodes, Redis, a small load, chromium (tests/browser)"
cargo test --locked --test it browser -- --ignored 2>&1 | tee -a "$log" || status=$?
# One closing line for the whole run: the sum of every test binary's summary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
