#!/usr/bin/env bash
# Runs one load scenario the way the README's figures were made: a fresh release node pinned to
# core 0, herald-bench pinned to core 1, the node stopped (SIGTERM) at the end. Then the same
# bench, same options, against herald-baseline (benches/baseline: the smallest tokio-tungstenite
# fan-out server), pinned the same way, and a summary of the two side by side. Machine stalls
# are watched on both cores (`--watch-cpus 0,1`) and reported with the figures.
#
#   benches/scenario.sh [SERVER_ENV=VALUE ...] -- [herald-bench options ...]
#   benches/scenario.sh -- --conns 10000 --topics 1 --publish-rate 5 --messages 50
#   BASELINE=0 benches/scenario.sh -- ...      # Herald only
#
# SERVER_ENV goes to Herald only. Builds nothing: run `cargo build --release --bin herald --bin
# herald-bench` and `cargo build --release -p herald-baseline` first; the binaries are taken from
# $CARGO_TARGET_DIR/release (default target/release). Without herald-baseline the baseline is
# skipped with a warning. Herald listens on 127.0.0.1:${BENCH_PORT:-28080}, the baseline on
# 127.0.0.1:${BASELINE_PORT:-BENCH_PORT+1}. Loopback only; the bench stops by itself. The exit
# status is herald-bench's for Herald's run, whatever the baseline's.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-target}/release
export HERALD_JWT_SECRET=bench-secret-bench-secret-bench-secret-0123
export HERALD_API_KEY=bench-api-key-0123456789
# Every bench connection is the one user "bench": lift the per-user connection limit (100).
export HERALD_MAX_CONNECTIONS_PER_USER=1000000
# ...and every bench connection comes from 127.0.0.1: lift the per-address limits too.
export HERALD_MAX_CONNECTIONS_PER_IP=1000000 HERALD_CONNECTION_RATE_PER_IP=1000000
export HERALD_TICKET_RATE_PER_IP=1000000 HERALD_TICKET_RATE_PER_USER=1000000
port=${BENCH_PORT:-28080}
bport=${BASELINE_PORT:-$((port + 1))}
server_env=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do server_env+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
# The summary needs each run's JSON report: the script passes --json-out itself, and copies
# Herald's to the caller's --json-out FILE (the baseline's to FILE.baseline.json) if one was given.
args=() json=0 json_out=
while [ $# -gt 0 ]; do
    case $1 in
        --json-out) json_out=${2:?--json-out needs a file}; shift 2 ;;
        --json-out=*) json_out=${1#--json-out=}; shift ;;
        *) [ "$1" = --json ] && json=1; args+=("$1"); shift ;;
    esac
done
# herald-baseline does not raise its own open-file limit (Herald does).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d)
pid=
stop() {
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
}
trap 'stop; rm -rf "$work"' EXIT

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Waits until 127.0.0.1:$1 accepts (at most 10 s), as long as server $pid runs.
wait_port() {
    for _ in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || return 1
        accepts "$1" && return 0
        sleep 0.05
    done
    return 1
}
# Starts server "$@" pinned to core 0 (log in $log), listening on $1 (a port nobody else holds).
start() {
    local p=$1; shift
    if accepts "$p"; then
        echo "scenario.sh: 127.0.0.1:$p is already in use (set BENCH_PORT / BASELINE_PORT)" >&2
        return 1
    fi
    "$@" > "$log" 2>&1 &
    pid=$!
    wait_port "$p" || { echo "scenario.sh: the server did not listen on 127.0.0.1:$p; see $log" >&2; return 1; }
}

# Herald. The WebSocket publisher is a client too: lift the per-connection frame rate for it.
log=/tmp/herald-bench-server.log
start "$port" env HERALD_LISTEN=127.0.0.1:$port HERALD_RATE_LIMIT=1000000 \
    HERALD_RATE_BURST=1000000 "${server_env[@]}" taskset -c 0 "$bin/herald" serve
status=0
taskset -c 1 "$bin/herald-bench" --url "http://127.0.0.1:$port" --server-pid "$pid" \
    --watch-cpus 0,1 --json-out "$work/herald.json" "${args[@]}" || status=$?
stop
[ -z "$json_out" ] || cp "$work/herald.json" "$json_out" 2>/dev/null || true

# The baseline, same bench options.
if [ "${BASELINE:-1}" = 0 ]; then
    exit "$status"
fi
if [ ! -x "$bin/herald-baseline" ]; then
    echo "scenario.sh: warning: no $bin/herald-baseline, so no baseline run; build it with" \
        "\`cargo build --release -p herald-baseline\` (BASELINE=0 skips it quietly)" >&2
    exit "$status"
fi
echo >&2
echo "scenario.sh: the same run against herald-baseline" >&2
log=/tmp/herald-baseline-server.log
bstatus=0
if start "$bport" taskset -c 0 "$bin/herald-baseline" --listen "127.0.0.1:$bport"; then
    taskset -c 1 "$bin/herald-bench" --baseline --url "http://127.0.0.1:$bport" \
        --server-pid "$pid" --watch-cpus 0,1 --json-out "$work/baseline.json" "${args[@]}" \
        || bstatus=$?
else
    bstatus=1
fi
stop
[ -z "$json_out" ] || cp "$work/baseline.json" "${json_out%.json}.baseline.json" 2>/dev/null || true

# Side by side (to stderr when the reports went to stdout as JSON).
summary() {
    python3 - "$work/herald.json" "$status" "$work/baseline.json" "$bstatus" <<'EOF'
import json, sys
runs = []
for path, status in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        with open(path) as f:
            runs.append((json.load(f), status))
    except (OSError, ValueError):
        runs.append(({}, status))
def get(r, *keys):
    for k in keys:
        r = r.get(k) if isinstance(r, dict) else None
    return r
rows = [
    ("deliveries/s", ("deliveries", "per_sec"), "{:,.0f}"),
    ("server CPU-s per M deliveries", ("server", "cpu_secs_per_million_deliveries"), "{:.3f}"),
    ("server CPU-s", ("server", "cpu_secs"), "{:.2f}"),
    ("latency p50 (us)", ("latency_us", "p50"), "{:,.0f}"),
    ("latency p99 (us)", ("latency_us", "p99"), "{:,.0f}"),
    ("latency max (us)", ("latency_us", "max"), "{:,.0f}"),
    ("RSS per connection (KiB)", ("server", "rss_per_conn_kib"), "{:.2f}"),
    ("avg frame (B)", ("deliveries", "avg_frame_bytes"), "{:.1f}"),
    ("lost", ("deliveries", "lost"), "{}"),
    ("duplicated", ("deliveries", "duplicated"), "{}"),
]
print(f"{'side by side':<32}{'herald':>14}{'baseline':>14}{'herald/base':>13}")
for name, keys, fmt in rows:
    vals = [get(r, *keys) for r, _ in runs]
    cells = [fmt.format(v) if isinstance(v, (int, float)) else "-" for v in vals]
    ratio = ""
    if all(isinstance(v, (int, float)) for v in vals) and vals[1] and name not in ("lost", "duplicated"):
        ratio = f"{vals[0] / vals[1]:.2f}"
    print(f"{name:<32}{cells[0]:>14}{cells[1]:>14}{ratio:>13}")
print(f"{'bench exit status':<32}{runs[0][1]:>14}{runs[1][1]:>14}")
EOF
}
if [ "$json" = 1 ]; then exec 4>&2; else exec 4>&1; fi
echo >&4
summary >&4 || echo "scenario.sh: no summary (it needs python3); the reports are above" >&2
exit "$status"
