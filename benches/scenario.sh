#!/usr/bin/env bash
# Runs one load scenario the way the README's figures were made: a fresh release node pinned to
# core 0, herald-bench pinned to core 1, the node stopped (SIGTERM) at the end. Machine stalls
# are watched on both cores (`--watch-cpus 0,1`) and reported with the figures.
#
#   benches/scenario.sh [SERVER_ENV=VALUE ...] -- [herald-bench options ...]
#   benches/scenario.sh -- --conns 10000 --topics 1 --publish-rate 5 --messages 50
#
# Builds nothing: run `cargo build --release --bin herald --bin herald-bench` first.
# Listens on 127.0.0.1:${BENCH_PORT:-28080}. Loopback only; the bench stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export HERALD_JWT_SECRET=bench-secret-bench-secret-bench-secret-0123
export HERALD_API_KEY=bench-api-key-0123456789
# Every bench connection is the one user "bench": lift the per-user connection limit (100).
export HERALD_MAX_CONNECTIONS_PER_USER=1000000
# ...and every bench connection comes from 127.0.0.1: lift the per-address limits too.
export HERALD_MAX_CONNECTIONS_PER_IP=1000000 HERALD_CONNECTION_RATE_PER_IP=1000000
export HERALD_TICKET_RATE_PER_IP=1000000 HERALD_TICKET_RATE_PER_USER=1000000
port=${BENCH_PORT:-28080}
server_env=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do server_env+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
ulimit -n 65536 2>/dev/null || true
# The WebSocket publisher is a client too: lift the per-connection frame rate for it.
env HERALD_LISTEN=127.0.0.1:$port HERALD_RATE_LIMIT=1000000 HERALD_RATE_BURST=1000000 \
    "${server_env[@]}" taskset -c 0 target/release/herald serve > /tmp/herald-bench-server.log 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
sleep 0.5
taskset -c 1 target/release/herald-bench --url "http://127.0.0.1:$port" --server-pid "$pid" \
    --watch-cpus 0,1 "$@"
