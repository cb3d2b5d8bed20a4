#!/usr/bin/env bash
# Measures send-to-reply latency through a node, and the same requests sent straight to the
# backend: the difference is the proxy's overhead. An echo backend (herald-bench --proxy backend)
# and the bench on core 1, the node on core 0. Loopback only; everything stops by itself.
#
#   benches/proxy.sh --conns 20 --publish-rate 2000 --requests 20000
#
# Builds nothing: run `cargo build --release --bin herald --bin herald-bench` first.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BENCH_PORT:-28200}
. benches/lib.sh
backend=127.0.0.1:$((base + 1))
taskset -c 1 target/release/herald-bench --proxy backend --listen "$backend" --duration-limit 300 \
    > "$dir/backend.log" 2>&1 &
pids+=($!)
cat > "$dir/herald.toml" <<TOML
[services.orders]
endpoints = ["http://$backend"]
max_concurrency = 4096
TOML
env HERALD_LISTEN=127.0.0.1:$base HERALD_RATE_LIMIT=1000000 HERALD_RATE_BURST=1000000 \
    taskset -c 0 target/release/herald serve --config "$dir/herald.toml" > "$dir/node.log" 2>&1 &
pids+=($!)
sleep 1
echo "== through the node"
taskset -c 1 target/release/herald-bench --url "http://127.0.0.1:$base" --proxy send --service orders "$@"
echo "== straight to the backend"
taskset -c 1 target/release/herald-bench --proxy direct --backend-url "http://$backend" "$@"
