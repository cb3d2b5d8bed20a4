# Shared by the bench scripts (sourced, not run): the secrets the nodes and the bench use, a
# raised open-file limit, a scratch directory `$dir`, and a cleanup that stops every process whose
# pid the script appended to `pids` and removes the directory, whatever way the script ends.
export HERALD_JWT_SECRET=bench-secret-bench-secret-bench-secret-0123
export HERALD_API_KEY=bench-api-key-0123456789
# Every bench connection is the one user "bench": lift the per-user connection limit (100).
export HERALD_MAX_CONNECTIONS_PER_USER=1000000
# ...and every bench connection comes from 127.0.0.1: lift the per-address limits too.
export HERALD_MAX_CONNECTIONS_PER_IP=1000000 HERALD_CONNECTION_RATE_PER_IP=1000000
export HERALD_TICKET_RATE_PER_IP=1000000 HERALD_TICKET_RATE_PER_USER=1000000
ulimit -n 65536 2>/dev/null || true
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
