#!/usr/bin/env bash
# The Autobahn WebSocket cases (kosoku, fuzzing-client mode) against Herald's own framing: a node
# built with the cargo feature `conformance` serves GET /conformance/echo (no ticket), and every
# case but the compression ones (12.*, 13.*: permessage-deflate is not offered) must end OK,
# NON-STRICT or INFORMATIONAL. Prints one summary line. Loopback only; stops by itself.
#   tests/conformance/autobahn.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -c 'import kosoku' 2>/dev/null || python3 -m pip install -q kosoku
cargo build --locked --quiet -p herald --features conformance --bin herald --target-dir target/conformance
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Every case connects anew from one address, with messages up to 16 MiB.
HERALD_LISTEN=127.0.0.1:$port HERALD_API_KEY=conformance-api-key-0123456789 \
HERALD_JWT_SECRET=conformance-jwt-secret-0123456789abcdef \
HERALD_MAX_MESSAGE_BYTES=16777216 HERALD_OUTBOX_BYTES=33554432 \
HERALD_CONNECTION_RATE_PER_IP=100000 \
    target/conformance/debug/herald serve > "$dir/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null || true; rm -rf "$dir"' EXIT
# Until the node listens (bounded: 10 s).
python3 - "$port" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 10
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("autobahn: the conformance node did not start")
        time.sleep(0.05)
PY
status=0
(cd "$dir" && timeout 900 kosoku -p 2 -x '12.*' -x '13.*' -o "$dir/reports" \
    "ws://127.0.0.1:$port/conformance/echo" > "$dir/kosoku.log" 2>&1) || status=$?
python3 - "$dir/reports" "$status" <<'PY'
import collections, glob, json, os, sys
reports, status = sys.argv[1], int(sys.argv[2])
verdicts = collections.Counter()
bad = []
for f in sorted(glob.glob(os.path.join(reports, "*_case_*.json"))):
    r = json.load(open(f))
    verdicts[r["behavior"]] += 1
    if r["behavior"] not in ("OK", "NON-STRICT", "INFORMATIONAL") or r["behaviorClose"] not in ("OK", "INFORMATIONAL"):
        bad.append(f"{r.get('id', f)}: {r['behavior']}/{r['behaviorClose']}")
for b in bad:
    print("autobahn:", b)
summary = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))
print(f"autobahn: {sum(verdicts.values())} cases ({summary}); {len(bad)} not passing")
sys.exit(1 if bad or status or not verdicts else 0)
PY
