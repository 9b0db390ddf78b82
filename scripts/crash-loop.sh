#!/usr/bin/env bash
# The long crash loop (issue 6): SIGKILL a running `horde-batch run` against
# `horde-batch sim` KILLS times at seeded random moments, resuming after each
# kill, then run it to completion and check that every job has exactly its
# images (each a valid WebP with its sidecar and exactly one index line), that
# no `.hb-tmp-*` file is left, that the sim has no request that was never
# retrieved, and that it generated no more images than asked plus one batch
# per kill.
#
# It runs `crash_loop_of_random_sigkills_loses_and_duplicates_nothing` from
# tests/reliability.rs with more kills, so the checks are exactly the test's
# (the test suite itself does 6 kills).
#
# With CRASH_SUBMIT_LATENCY (e.g. 900ms) the sim answers each submit that
# long after queueing it, so most kills land between a POST reaching the
# Horde and its answer; the run after must find each such request (registered
# key, after the find_user cache) and leave none orphaned.
#
# With CRASH_BUSY_KEY=N the key also holds N finished requests of another
# client of the same size (`horde-batch sim --busy-key N`): each lost submit
# must be told apart from them by its seeds.
#
# Usage:
#   scripts/crash-loop.sh [KILLS] [SEED]
#   CRASH_KILLS=500 CRASH_SEED=7 scripts/crash-loop.sh
#   CRASH_SUBMIT_LATENCY=900ms scripts/crash-loop.sh 200
# KILLS defaults to 200, SEED to 27409. Honours CARGO_TARGET_DIR. Takes about
# 1.5 s per kill plus the final run. Prints one result line:
#   crash-loop: PASS kills=200 seed=27409 images=... generated=... requests=... never_retrieved=0 elapsed=...s
# or, with the test's output before it,
#   crash-loop: FAIL kills=200 seed=27409
# and exits 0 on PASS, 1 on FAIL, 2 on bad arguments.
set -euo pipefail

kills="${1:-${CRASH_KILLS:-200}}"
seed="${2:-${CRASH_SEED:-27409}}"
for value in "$kills" "$seed"; do
    case "$value" in
        '' | *[!0-9]*)
            echo "crash-loop: KILLS and SEED must be whole numbers, got '$value'" >&2
            exit 2
            ;;
    esac
done

cd "$(dirname "$0")/.."
log="$(mktemp -t crash-loop.XXXXXX)"
trap 'rm -f "$log"' EXIT

if HORDE_BATCH_CRASH_KILLS="$kills" HORDE_BATCH_CRASH_SEED="$seed" \
    HORDE_BATCH_CRASH_SUBMIT_LATENCY="${CRASH_SUBMIT_LATENCY:-0s}" \
    HORDE_BATCH_CRASH_BUSY_KEY="${CRASH_BUSY_KEY:-0}" \
    cargo test --quiet --test it \
    reliability::crash_loop_of_random_sigkills_loses_and_duplicates_nothing -- --exact --nocapture \
    >"$log" 2>&1; then
    grep '^crash-loop: ' "$log"
else
    cat "$log" >&2
    echo "crash-loop: FAIL kills=$kills seed=$seed"
    exit 1
fi
