#!/usr/bin/env bash
# Runs one load scenario against a cluster: a fresh redis-server and NODES release nodes, all
# pinned to core 0; herald-bench pinned to core 1, subscribers spread over the nodes, messages
# published with FCALL herald_publish straight to Redis (as a backend would). Stops everything
# at the end. Loopback only; the bench stops by itself.
#
#   NODES=2 benches/cluster.sh --conns 10000 --topics 1000 --publish-rate 5000 --messages 25000
#
# Builds nothing: run `cargo build --release --bin herald --bin herald-bench` first.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${NODES:-2}
base=${BENCH_PORT:-28100}
. benches/lib.sh
rport=$((base + 99))
taskset -c 0 redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$dir" > "$dir/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$rport" ping > /dev/null 2>&1 && break; sleep 0.1; done
urls=()
for i in $(seq 0 $((nodes - 1))); do
    port=$((base + i))
    env HERALD_LISTEN=127.0.0.1:$port HERALD_REDIS_URL=redis://127.0.0.1:$rport \
        HERALD_NODE_ID=node$i taskset -c 0 target/release/herald serve > "$dir/node$i.log" 2>&1 &
    pids+=($!)
    urls+=("http://127.0.0.1:$port")
done
sleep 1
also=()
for u in "${urls[@]:1}"; do also+=(--also-url "$u"); done
taskset -c 1 target/release/herald-bench --url "${urls[0]}" "${also[@]}" \
    --redis-url "redis://127.0.0.1:$rport" --publish-via redis "$@"
