#!/usr/bin/env bash
# A node under attack: scenario (b), 10,000 subscribers of one topic receiving 5 messages a
# second, measured twice on a fresh release node: alone, then while benches/attack.py attacks the
# same node (200 stalled readers, waves of 5,000 connections from one address, pipelining HTTP
# clients that never read, and large messages on the stalled readers' topic).
#
#   benches/attack.sh [-- herald-bench options ...]   (default: scenario (b) with 100 messages)
#   ATTACK_ARGS="--flood 0" benches/attack.sh           # attack.py options: one attack at a time
#
# The node keeps its default per-address limits: the bench connects from 100 loopback addresses
# (--source-addrs 100); only the per-user limits are lifted, as every bench connection is the one
# user "bench". The node is pinned to core 0; the bench and the attacker share core 1, the
# attacker at nice 10 so that it takes only what the bench leaves. Builds nothing: run
# `cargo build --release --bin herald --bin herald-bench` first. Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export HERALD_JWT_SECRET=bench-secret-bench-secret-bench-secret-0123
export HERALD_API_KEY=bench-api-key-0123456789
export HERALD_MAX_CONNECTIONS_PER_USER=1000000 HERALD_TICKET_RATE_PER_USER=1000000
port=${BENCH_PORT:-28080}
[ "${1:-}" = "--" ] && shift
# herald-bench options given after -- replace these.
bench_args=(--conns 10000 --topics 1 --messages 100 --publish-rate 5 --publishers 1 --source-addrs 100)
(($#)) && bench_args=("$@")
ulimit -n 20000 2>/dev/null || true
out=$(mktemp -d)
node=
attacker=
cleanup() {
    [ -n "$attacker" ] && kill -TERM "$attacker" 2>/dev/null || true
    [ -n "$node" ] && kill -TERM "$node" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$out"
}
trap cleanup EXIT

start_node() {
    # The WebSocket publisher is a client too: lift the per-connection frame rate for it.
    env HERALD_LISTEN=127.0.0.1:$port HERALD_RATE_LIMIT=1000000 HERALD_RATE_BURST=1000000 \
        taskset -c 0 target/release/herald serve > "$out/node-$1.log" 2>&1 &
    node=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "attack.sh: the node did not become ready" >&2
    exit 1
}
stop_node() { kill -TERM "$node"; wait "$node" || true; node=; }
run_bench() {
    taskset -c 1 target/release/herald-bench --url "http://127.0.0.1:$port" --server-pid "$node" \
        --watch-cpus 0,1 "${bench_args[@]}" | tee "$out/bench-$1.txt"
}
p99() { sed -n 's/.* p99 \([0-9.]*\) .*/\1/p' "$out/bench-$1.txt" | head -1; }

echo "== alone"
start_node alone
run_bench alone
stop_node

echo "== under attack"
start_node attack
rm -f "$out/ready"
taskset -c 1 nice -n 10 python3 benches/attack.py --url "http://127.0.0.1:$port" \
    --ready-file "$out/ready" --duration 180 ${ATTACK_ARGS:-} > "$out/attack.txt" 2>&1 &
attacker=$!
for _ in $(seq 600); do [ -e "$out/ready" ] && break; sleep 0.1; done
[ -e "$out/ready" ] || { cat "$out/attack.txt"; echo "attack.sh: the attacker never got ready" >&2; exit 1; }
run_bench attack
kill -INT "$attacker"
wait "$attacker" || true
attacker=
cat "$out/attack.txt"
stop_node

alone=$(p99 alone)
attack=$(p99 attack)
echo "== p99 alone ${alone} us, under attack ${attack} us: ratio $(python3 -c "print(round($attack / $alone, 2))") (target <= 1.5)"
