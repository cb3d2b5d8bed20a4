#!/usr/bin/env bash
# Connection storms: how many new authenticated connections per second one node completes on one
# core (ticket minted, TCP connect, TLS handshake, upgrade, welcome, sub answered), plain and over
# TLS, and the latency of each step. Builds the release binaries, then for each mode runs a probe
# (PROBE connections one at a time: what each step costs with no queue) and the storms (CONNS
# connections, CONC at a time, for each CONC), each against a fresh node pinned to core 0 (over TLS with a
# certificate openssl makes in a temporary directory) with `herald-bench --storm` pinned to
# core 1, and ends with a table of every run.
#
#   benches/storm.sh [--redis] [--modes plain,tls] [--no-build] [NODE_ENV=VALUE ...] [-- bench options]
#   benches/storm.sh
#   benches/storm.sh --redis                                  # the node on a fresh redis-server
#   benches/storm.sh --redis HERALD_EVENTS=connect,disconnect # ... recording lifecycle events
#   CONNS=5000 CONC=64 CERT=rsa benches/storm.sh --modes tls -- --fresh-ticket-conns
#
# CONNS (10000) connections, CONC at a time (64,256: a storm at each), PROBE (1000; 0: none), over USERS
# (CONNS: every connection its own user, as after a node failure) and TOPICS (100); CERT ec (P-256,
# the default) or rsa (2048). With --redis, a redis-server on a free port shares core 0 with the
# node (REDIS_CPU), as in cluster.sh, flushed before each run; its CPU is reported apart. Every
# bench connection comes from 127.0.0.1 as the one bench process, so lib.sh lifts the per-address
# and per-user limits (the output says so). The process limit here is 20,000 open files and the
# bench and the node each hold one per connection: CONNS stays under it. Loopback only; every loop
# is bounded; the nodes and Redis stop when the script ends, however it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${CONNS:-10000}
conc=${CONC:-64,256}
probe=${PROBE:-1000}
users=${USERS:-$conns}
topics=${TOPICS:-100}
cert_kind=${CERT:-ec}
redis_cpu=${REDIS_CPU:-0}
modes=plain,tls
redis=0
build=1
node_env=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    case "$1" in
        --redis) redis=1 ;;
        --no-build) build=0 ;;
        --modes) modes=$2; shift ;;
        *=*) node_env+=("$1") ;;
        *) echo "storm.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
    shift
done
[ "${1:-}" = "--" ] && shift
. benches/lib.sh
bin=${CARGO_TARGET_DIR:-target}/release
if [ "$build" = 1 ]; then
    cargo build --release -p herald -p herald-bench
fi
hard=$(ulimit -Hn)
most=0
for at in ${conc//,/ }; do if [ "$at" -gt "$most" ]; then most=$at; fi; done
if [ "$hard" != unlimited ] && [ $((conns + 2 * most + 200)) -ge "$hard" ]; then
    echo "storm.sh: $conns connections need about $((conns + 2 * most + 200)) open files in the bench and" \
        "as many in the node; the limit is $hard: lower CONNS" >&2
    exit 2
fi

# A loopback port nothing listens on, from $1 upwards (at most 200 tried).
free_port() {
    local p
    for p in $(seq "$1" $(($1 + 199))); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    echo "storm.sh: no free port from $1" >&2
    exit 2
}
# Waits (at most 10 s) until something accepts on port $1.
wait_port() {
    local i
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "storm.sh: nothing listens on $1 after 10 s" >&2
    return 1
}

# SYNs the kernel dropped because a listen queue was full, so far (0 without nstat).
listen_overflows() {
    nstat -az TcpExtListenOverflows 2> /dev/null | awk '/ListenOverflows/ { print $2; exit }' | grep . || echo 0
}

case "$cert_kind" in
    ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
    rsa) newkey=(-newkey rsa:2048) ;;
    *) echo "storm.sh: CERT is ec or rsa" >&2; exit 2 ;;
esac
openssl req -x509 "${newkey[@]}" -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2> /dev/null

redis_env=()
redis_args=()
if [ "$redis" = 1 ]; then
    rport=$(free_port "${REDIS_PORT:-28499}")
    taskset -c "$redis_cpu" redis-server --port "$rport" --bind 127.0.0.1 --save "" \
        --appendonly no --dir "$dir" > "$dir/redis.log" 2>&1 &
    rpid=$!
    pids+=("$rpid")
    for _ in $(seq 50); do redis-cli -p "$rport" ping > /dev/null 2>&1 && break; sleep 0.1; done
    redis_env=(HERALD_REDIS_URL="redis://127.0.0.1:$rport")
    redis_args=(--redis-pid "$rpid")
fi

echo "storm: $conns connections, $conc at a time (a probe of $probe one at a time first), $users users, $topics topics; node on core 0," \
    "bench on core 1$([ "$redis" = 1 ] && echo ", redis-server $(redis-server --version | cut -d' ' -f3) on core $redis_cpu")"
echo "limits: lifted by lib.sh, not spread over --source-addrs (every connection comes from 127.0.0.1):" \
    "HERALD_MAX_CONNECTIONS_PER_IP=$HERALD_MAX_CONNECTIONS_PER_IP" \
    "HERALD_CONNECTION_RATE_PER_IP=$HERALD_CONNECTION_RATE_PER_IP" \
    "HERALD_TICKET_RATE_PER_IP=$HERALD_TICKET_RATE_PER_IP" \
    "HERALD_TICKET_RATE_PER_USER=$HERALD_TICKET_RATE_PER_USER" \
    "HERALD_MAX_CONNECTIONS_PER_USER=$HERALD_MAX_CONNECTIONS_PER_USER"
[ ${#node_env[@]} -gt 0 ] && echo "node environment: ${node_env[*]}"
echo "machine: $(nproc) CPUs; $(uptime | sed 's/^ *//')"

# One run: a fresh node for mode $1, `herald-bench --storm` with $2 connections $3 at a time,
# its JSON report kept as $dir/$1-$3.json.
run_one() {
    local mode=$1 n=$2 at=$3 scheme label port node overflows tls_env=() tls_args=()
    case "$mode" in
        plain) scheme=http; label=plain ;;
        tls)
            scheme=https
            label="TLS, $cert_kind certificate"
            tls_env=(HERALD_TLS_CERT="$dir/cert.pem" HERALD_TLS_KEY="$dir/key.pem")
            tls_args=(--ca "$dir/cert.pem")
            ;;
        *) echo "storm.sh: --modes takes plain and tls" >&2; exit 2 ;;
    esac
    if [ "$redis" = 1 ]; then redis-cli -p "$rport" flushall > /dev/null; fi
    port=$(free_port "${BENCH_PORT:-28400}")
    env HERALD_LISTEN="127.0.0.1:$port" HERALD_DRAIN_DELAY_SECS=0 HERALD_DRAIN_WINDOW_SECS=0 \
        "${tls_env[@]}" "${redis_env[@]}" "${node_env[@]}" \
        taskset -c 0 "$bin/herald" serve > "$dir/node-$mode-$at.log" 2>&1 &
    node=$!
    pids+=("$node")
    wait_port "$port"
    overflows=$(listen_overflows)
    echo
    echo "== $mode, $n connections $at at a time: $label, $scheme://127.0.0.1:$port, node listen backlog" \
        "$(ss -Hlnt "sport = :$port" 2> /dev/null | awk '{ print $3; exit }')"
    taskset -c 1 "$bin/herald-bench" --storm --url "$scheme://127.0.0.1:$port" "${tls_args[@]}" \
        --conns "$n" --connect-concurrency "$at" --users "$(( users < n ? users : n ))" \
        --topics "$topics" --server-pid "$node" "${redis_args[@]}" --watch-cpus 0,1 --quiet \
        --json-out "$dir/$mode-$at.json" "${bench_args[@]}" || echo "(herald-bench exited with $?)"
    echo "listen queue overflows during the run (TcpExtListenOverflows, the whole machine):" \
        "$(($(listen_overflows) - overflows))"
    kill -TERM "$node" 2> /dev/null || true
    wait "$node" 2> /dev/null || true
    if [ -s "$dir/$mode-$at.json" ]; then reports+=("$mode/$at=$dir/$mode-$at.json"); fi
}

bench_args=("$@")
IFS=, read -r -a conc_list <<< "$conc"
reports=()
IFS=, read -r -a mode_list <<< "$modes"
for mode in "${mode_list[@]}"; do
    # Unloaded: one connection at a time, what each step costs without queueing.
    if [ "$probe" -gt 0 ]; then run_one "$mode" "$probe" 1; fi
    for at in "${conc_list[@]}"; do run_one "$mode" "$conns" "$at"; done
done

[ ${#reports[@]} -gt 0 ] || exit 1
echo
echo "== summary (mode/at a time; steps in ms; node, bench, and other processes and softirq busy" \
    "over the phase, in % of one core; node cpu-s per 1000 connections, and the rate one core" \
    "would complete at that cost; Redis cpu-s per 1000)"
printf '%-10s %7s %7s  %-13s %-13s %-13s %-13s %-13s %-13s %5s %6s %5s %8s %8s %8s\n' run conns/s steady \
    "ticket p50/99" "upgrade" "tls" "welcome" "subscribe" "total" node% bench% oth% cpu/1000 capacity redis/1k
for r in "${reports[@]}"; do
    jq -r --arg run "${r%%=*}" '
        def ms(s): if s == null then "-" else "\(s.p50 / 1000 * 100 | round / 100)/\(s.p99 / 1000 * 100 | round / 100)" end;
        def n(x; d): if x == null then "-" else (x * d | round / d | tostring) end;
        def pct(x): if x == null or .storm.elapsed_secs == 0 then "-" else n(100 * x / .storm.elapsed_secs; 1) end;
        [ $run, n(.storm.conns_per_sec; 1), n(.storm.steady_conns_per_sec; 1),
          ms(.storm.steps_us.ticket), ms(.storm.steps_us.upgrade), ms(.storm.steps_us.tls_handshake),
          ms(.storm.steps_us.welcome), ms(.storm.steps_us.subscribe), ms(.storm.steps_us.total),
          pct(.server.cpu_secs), pct(.bench.cpu_secs), pct(.bench.others_cpu_secs),
          n(.server.cpu_secs_per_1000_conns; 1000),
          (if (.server.cpu_secs_per_1000_conns // 0) > 0 then n(1000 / .server.cpu_secs_per_1000_conns; 1) else "-" end),
          n(.storm.redis.cpu_secs_per_1000_conns; 1000) ]
        | @tsv' "${r#*=}" |
        awk -F'\t' '{ printf "%-10s %7s %7s  %-13s %-13s %-13s %-13s %-13s %-13s %5s %6s %5s %8s %8s %8s\n",
            $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 }'
done
