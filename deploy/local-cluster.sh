#!/usr/bin/env bash
# The docker-compose topology without containers, on loopback: Redis, three Herald nodes,
# HAProxy in front of them (TCP, leastconn, health checks on /readyz) and the example backend.
#
#   deploy/local-cluster.sh up           # builds (release) what is missing, starts everything,
#                                        # and prints KEY=value lines: URL, REDIS_URL, API_KEY, JWT, ...
#   deploy/local-cluster.sh down         # stops everything, removes the state directory
#   deploy/local-cluster.sh stop-node N [--kill]   # SIGTERM (drain) or SIGKILL node N (1..3)
#   deploy/local-cluster.sh start-node N           # starts node N again on its port
#   deploy/local-cluster.sh status
#
# Knobs (environment): HERALD_BIN and BACKEND_BIN (prebuilt binaries; otherwise
# `cargo build --release`), LB_PORT (8080), NODE_PORTS ("8081 8082 8083"), REDIS_PORT (6390),
# BACKEND_PORT (3000), CLUSTER_DIR (state: configs, logs, pids; default
# ${TMPDIR:-/tmp}/herald-local-cluster). haproxy is installed from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

LB_PORT=${LB_PORT:-8080}
read -r -a NODE_PORTS <<< "${NODE_PORTS:-8081 8082 8083}"
REDIS_PORT=${REDIS_PORT:-6390}
BACKEND_PORT=${BACKEND_PORT:-3000}
DIR=${CLUSTER_DIR:-${TMPDIR:-/tmp}/herald-local-cluster}

die() { echo "local-cluster: $*" >&2; exit 1; }

# Waits (at most $2 seconds) until `$1` succeeds.
wait_for() {
    local what=$1 bound=$2 i
    for ((i = 0; i < bound * 10; i++)); do
        if eval "$what" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    return 1
}

binaries() {
    if [[ -z "${HERALD_BIN:-}" || -z "${BACKEND_BIN:-}" ]]; then
        echo "local-cluster: building herald and the example backend (release)" >&2
        cargo build --release --locked --bin herald --bin herald-example-backend >&2
        local target=${CARGO_TARGET_DIR:-target}
        HERALD_BIN=${HERALD_BIN:-$target/release/herald}
        BACKEND_BIN=${BACKEND_BIN:-$target/release/herald-example-backend}
    fi
    [[ -x "$HERALD_BIN" ]] || die "HERALD_BIN=$HERALD_BIN is not an executable"
    [[ -x "$BACKEND_BIN" ]] || die "BACKEND_BIN=$BACKEND_BIN is not an executable"
    HERALD_BIN=$(realpath "$HERALD_BIN")
    BACKEND_BIN=$(realpath "$BACKEND_BIN")
}

need_tools() {
    command -v redis-server >/dev/null || die "redis-server is missing (apt-get install redis-server)"
    if ! command -v haproxy >/dev/null; then
        echo "local-cluster: installing haproxy (Debian package)" >&2
        if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq haproxy >&2
        else sudo apt-get update -qq && sudo apt-get install -y -qq haproxy >&2; fi
    fi
}

# Starts node $1 (1-based) from its config; its pid in node-$1.pid.
start_node() {
    local n=$1 port=${NODE_PORTS[$(($1 - 1))]}
    [[ -f "$DIR/node-$n.toml" ]] || die "no config for node $n: run up first"
    # shellcheck disable=SC1091
    source "$DIR/secrets.env"
    HERALD_JWT_SECRET=$JWT_SECRET HERALD_API_KEY=$API_KEY \
        nohup "$(cat "$DIR/herald.bin")" serve --config "$DIR/node-$n.toml" \
        >>"$DIR/node-$n.log" 2>&1 &
    echo $! >"$DIR/node-$n.pid"
    wait_for "'$(cat "$DIR/herald.bin")' health --url http://127.0.0.1:$port" 20 \
        || die "node $n did not become healthy; see $DIR/node-$n.log"
}

# Stops the process of pid file $1: SIGTERM (or $2=KILL), then waits up to $3 seconds.
stop_pid() {
    local file=$1 sig=${2:-TERM} bound=${3:-30} pid
    [[ -f "$file" ]] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -s "$sig" "$pid" 2>/dev/null || true
        wait_for "! kill -0 $pid" "$bound" || kill -s KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

up() {
    need_tools
    binaries
    [[ -e "$DIR/redis.pid" ]] && die "already up (state in $DIR); run down first"
    mkdir -p "$DIR"
    echo "$HERALD_BIN" >"$DIR/herald.bin"
    local api_key jwt_secret
    api_key=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    jwt_secret=$(head -c 48 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    printf 'API_KEY=%s\nJWT_SECRET=%s\n' "$api_key" "$jwt_secret" >"$DIR/secrets.env"
    chmod 600 "$DIR/secrets.env"

    # Redis, append-only like the compose file's.
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR" --appendonly yes \
        --save "" --daemonize no >"$DIR/redis.log" 2>&1 &
    echo $! >"$DIR/redis.pid"
    wait_for "redis-cli -p $REDIS_PORT ping" 10 || die "redis did not start; see $DIR/redis.log"

    # The example backend (the nodes' auth hook and `send` service).
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT" BACKEND_LISTEN="127.0.0.1:$BACKEND_PORT" \
        BACKEND_HERALD_WS="ws://127.0.0.1:$LB_PORT/ws" \
        nohup "$BACKEND_BIN" >"$DIR/backend.log" 2>&1 &
    echo $! >"$DIR/backend.pid"

    local n port
    for n in 1 2 3; do
        port=${NODE_PORTS[$((n - 1))]}
        cat >"$DIR/node-$n.toml" <<EOF
# Node $n of the local cluster (deploy/local-cluster.sh); secrets come from the environment.
listen = "127.0.0.1:$port"
node_id = "local-$n"
redis_url = "redis://127.0.0.1:$REDIS_PORT"
allowed_origins = ["http://127.0.0.1:$BACKEND_PORT", "http://localhost:$BACKEND_PORT"]
auth_service = "app"
events = ["connect", "disconnect", "subscribe", "unsubscribe"]
presence_topics = ["demo.>"]
# On loopback every client is 127.0.0.1, behind HAProxy too: lift the per-address and per-user
# rates that would otherwise count them all as one.
connection_rate_per_ip = 10000
ticket_rate_per_ip = 10000
ticket_rate_per_user = 1000
drain_delay_secs = 1
drain_window_secs = 2
shutdown_timeout_secs = 10

[services.app]
endpoints = ["http://127.0.0.1:$BACKEND_PORT"]
forward_headers = ["cookie"]
timeout_ms = 2000
EOF
        start_node "$n"
    done

    {
        cat <<EOF
# HAProxy of the local cluster (deploy/local-cluster.sh): TCP mode, least connections,
# health checks on each node's /readyz.
global
    maxconn 5000
    pidfile $DIR/haproxy.pid
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
frontend clients
    bind 127.0.0.1:$LB_PORT
    default_backend gateways
backend gateways
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
EOF
        for n in 1 2 3; do
            echo "    server node-$n 127.0.0.1:${NODE_PORTS[$((n - 1))]} check"
        done
    } >"$DIR/haproxy.cfg"
    haproxy -c -q -f "$DIR/haproxy.cfg" || die "the generated haproxy.cfg is not valid"
    haproxy -f "$DIR/haproxy.cfg" -db >"$DIR/haproxy.log" 2>&1 &
    echo $! >"$DIR/haproxy.proc"
    wait_for "'$HERALD_BIN' health --url http://127.0.0.1:$LB_PORT --path /readyz" 20 \
        || die "HAProxy did not route to a ready node; see $DIR/haproxy.log"
    wait_for "'$HERALD_BIN' health --url http://127.0.0.1:$BACKEND_PORT" 20 \
        || die "the example backend did not start; see $DIR/backend.log"

    local jwt
    jwt=$(HERALD_JWT_SECRET=$jwt_secret "$HERALD_BIN" token --user demo --ttl-secs 86400)
    echo "URL=http://127.0.0.1:$LB_PORT"
    echo "WS_URL=ws://127.0.0.1:$LB_PORT"
    echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
    echo "API_KEY=$api_key"
    echo "JWT=$jwt"
    echo "BACKEND_URL=http://127.0.0.1:$BACKEND_PORT"
    echo "NODES=$(printf 'http://127.0.0.1:%s,' "${NODE_PORTS[@]}" | sed 's/,$//')"
    echo "CLUSTER_DIR=$DIR"
}

down() {
    [[ -d "$DIR" ]] || { echo "local-cluster: nothing to stop ($DIR)" >&2; return 0; }
    stop_pid "$DIR/haproxy.proc" TERM 5
    local n
    for n in 1 2 3; do stop_pid "$DIR/node-$n.pid" TERM 15; done
    stop_pid "$DIR/backend.pid" TERM 10
    stop_pid "$DIR/redis.pid" TERM 10
    rm -rf "$DIR"
}

status() {
    local f name
    for f in "$DIR"/*.pid "$DIR"/haproxy.proc; do
        [[ -f "$f" ]] || continue
        name=$(basename "$f"); name=${name%.*}
        if kill -0 "$(cat "$f")" 2>/dev/null; then echo "$name: up (pid $(cat "$f"))"
        else echo "$name: down"; fi
    done
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    start-node)
        [[ "${2:-}" =~ ^[123]$ ]] || die "start-node 1|2|3"
        [[ -f "$DIR/node-$2.pid" ]] && kill -0 "$(cat "$DIR/node-$2.pid")" 2>/dev/null \
            && die "node $2 is running"
        start_node "$2" ;;
    stop-node)
        [[ "${2:-}" =~ ^[123]$ ]] || die "stop-node 1|2|3 [--kill]"
        if [[ "${3:-}" == --kill ]]; then stop_pid "$DIR/node-$2.pid" KILL 5
        else stop_pid "$DIR/node-$2.pid" TERM 15; fi ;;
    *) die "usage: $0 up | down | status | start-node N | stop-node N [--kill]" ;;
esac
