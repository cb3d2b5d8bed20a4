#!/usr/bin/env bash
# A bounded chaos run against a real cluster: a persistent redis-server (append-only file) and
# three release nodes on free loopback ports, a backend publishing with FCALL herald_publish the
# whole time, and WebSocket clients that resume with `since` whenever their connection ends. Redis
# and the nodes are faulted one after another (pub/sub connections killed, Redis paused, stopped,
# killed and restarted, full, its user switched off; a node killed, another drained), then the
# clients' offsets are checked against what Redis accepted. Not run by CI or test.sh.
#
#   benches/chaos.sh                         # ~3 minutes: 60 clients, 4 topics, 200 msg/s
#   benches/chaos.sh --duration 60 --clients 30
#   HERALD_BIN=/tmp/chaos-herald nice -n 10 benches/chaos.sh
#
# Builds nothing: it runs $HERALD_BIN (default target/release/herald; `cargo build --release
# --bin herald` first). It needs redis-server and redis-cli 7 and python3 >= 3.11; the one Python
# package it needs, `websockets`, is installed on first use into a virtualenv of its own
# ($HERALD_CHAOS_VENV, default ~/.cache/herald-chaos-venv) unless python3 already has it.
# Everything it starts is stopped when it ends, however it ends. Exit status: 0 when no client
# missed (outside an announced `recovered: false`), repeated or reordered an offset; 1 when one
# did; 2 when the run itself could not be made.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${HERALD_BIN:-target/release/herald}
if [ ! -x "$bin" ]; then
    echo "chaos.sh: no herald binary at $bin (cargo build --release --bin herald, or set HERALD_BIN)" >&2
    exit 2
fi
for tool in redis-server redis-cli python3; do
    command -v "$tool" > /dev/null || { echo "chaos.sh: $tool is needed" >&2; exit 2; }
done
py=python3
if ! python3 -c 'import websockets, sys; sys.exit(int(websockets.version.version.split(".")[0]) < 13)' \
        2> /dev/null; then
    venv=${HERALD_CHAOS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/herald-chaos-venv}
    if ! "$venv/bin/python" -c 'import websockets' 2> /dev/null; then
        echo "chaos.sh: installing the Python package websockets into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet 'websockets>=13,<18'
    fi
    py=$venv/bin/python
fi
ulimit -n 65536 2> /dev/null || true
child=
stop() {
    # chaos.py stops what it started itself; this only makes sure it is told to.
    if [ -n "$child" ] && kill -0 "$child" 2> /dev/null; then
        kill -TERM "$child" 2> /dev/null || true
        wait "$child" 2> /dev/null || true
    fi
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
"$py" benches/chaos.py --herald "$bin" "$@" &
child=$!
set +e
wait "$child"
rc=$?
child=
exit "$rc"
