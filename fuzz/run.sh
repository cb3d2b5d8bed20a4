#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20: the smoke run of test.sh), seeded from
# proto/golden (fuzz/seed.py). Needs the nightly toolchain; installs cargo-fuzz when it is missing.
#   fuzz/run.sh [SECONDS] [TARGET ...]
#   fuzz/run.sh 600 client_frame        # ten minutes of one target
# A target that finds a fault stops this script with the input in fuzz/artifacts/<target>/: fix
# the fault, then copy the input into fuzz/regressions/<target>/ (tests/it/fuzz_regressions.rs runs it).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(websocket_frames client_frame jwt ticket redis_envelope)
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: SKIPPED, no nightly toolchain here (rustup toolchain install nightly to run them)"
    exit 0
fi
if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
python3 seed.py >/dev/null
cargo +nightly fuzz build
for t in "${targets[@]}"; do
    # -rss_limit_mb: libFuzzer's own bound; -timeout: one input may not take more than 10 s.
    cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 2>&1 | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|.*panicked|Done)' \
        | sed "s/^/fuzz $t: /" || true
    # The filter above swallows libFuzzer's status; what it leaves behind tells whether it found
    # a fault (a crash, a timeout, or memory over the limit).
    if compgen -G "artifacts/$t/crash-*" >/dev/null || compgen -G "artifacts/$t/timeout-*" >/dev/null \
        || compgen -G "artifacts/$t/oom-*" >/dev/null; then
        echo "fuzz $t: FAILED, inputs in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    echo "fuzz $t: clean for ${secs} s"
done
