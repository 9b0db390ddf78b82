#!/usr/bin/env bash
# The polling case: `bash benches/polling.sh` (about 1.5 minutes), also step 6
# of benches/run.sh.
#
# For each seed, a fresh `horde-batch sim` with its DEFAULT settings (4
# workers, 2 s per image, 50 megapixel-steps/s per worker, so `/check` reads
# wait_time 0 for these small images while they still wait, as the real Horde
# does; docs/horde-api.md §9.1) and one registered API key. horde-batch runs
# benches/workload-polling.yaml (40 images at 512x512, 20 steps, as 4 requests
# of n = 10) with that key in AI_HORDE_API_KEY. The sim's /sim/stats gives the
# API calls by endpoint and status and the 429s; /usr/bin/time the wall time.
# `python3 benches/report.py --polling DIR` then prints the table (also kept
# in DIR/results.md) and writes DIR/results.json.
#
# Knobs (environment):
#   BENCH_POLLING_SEEDS   sim seeds, one run each ("1 2 3")
#   BENCH_POLLING_DIR     where the runs go (target/bench/polling; emptied first)
#   BENCH_POLLING_SIM     the horde-batch binary that serves the sim (default:
#                         this tree's release build, built first; if set,
#                         nothing is built)
#   BENCH_POLLING_CLIENT  the horde-batch binary that runs the manifest
#                         (default: the sim's binary); an older build here
#                         measures an older engine against today's sim
#   BENCH_POLLING_LABEL   what the report calls the client
#   CARGO_TARGET_DIR
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
export CARGO_TARGET_DIR="$target_dir"
bin="$target_dir/release/horde-batch"
work="${BENCH_POLLING_DIR:-$repo/target/bench/polling}"
seeds="${BENCH_POLLING_SEEDS:-1 2 3}"
# A made-up key: the sim registers it; nothing else ever sees it.
key="bench-polling-key-0123456789"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

for tool in /usr/bin/time curl python3; do
    command -v "$tool" >/dev/null || { echo "benches/polling.sh needs $tool" >&2; exit 1; }
done

if [[ -z "${BENCH_POLLING_SIM:-}" ]]; then
    log "building horde-batch (release)"
    cargo build --release --quiet --bin horde-batch
fi
bin="${BENCH_POLLING_SIM:-$bin}"
client="${BENCH_POLLING_CLIENT:-$bin}"

rm -rf "$work"
mkdir -p "$work"
{
    echo "{"
    echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
    echo "  \"load_average_at_start\": \"$(cut -d' ' -f1-3 /proc/loadavg)\","
    echo "  \"tree\": \"$(git rev-parse --short HEAD)$([[ -z "$(git status --porcelain -- src Cargo.toml Cargo.lock)" ]] || echo ' + uncommitted changes in src')\","
    echo "  \"sim_binary\": \"$bin\","
    echo "  \"client_binary\": \"$client\","
    echo "  \"client_label\": \"${BENCH_POLLING_LABEL:-horde-batch at $(git rev-parse --short HEAD)}\","
    echo "  \"sim\": \"4 workers, 2 s per image, 50 MPS per worker, one registered key\","
    echo "  \"ideal_s\": 20"
    echo "}"
} >"$work/meta.json"

sim_pid=""
cleanup() {
    if [[ -n "$sim_pid" ]]; then
        kill "$sim_pid" 2>/dev/null || true
        wait "$sim_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

for seed in $seeds; do
    name="seed-$seed"
    "$bin" sim --port 0 --seed "$seed" --api-key "$key" >"$work/$name.sim.out" 2>"$work/$name.sim.err" &
    sim_pid=$!
    sim_url=""
    for _ in $(seq 1 100); do
        line="$(head -n 1 "$work/$name.sim.out" 2>/dev/null || true)"
        if [[ "$line" == "horde-batch sim listening on "* ]]; then
            sim_url="${line##* }"
            break
        fi
        kill -0 "$sim_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z "$sim_url" ]]; then
        echo "the simulator did not start:" >&2
        cat "$work/$name.sim.err" >&2
        exit 1
    fi
    log "polling case, seed $seed: 40 images as 4 requests of n = 10, sim defaults"
    AI_HORDE_API_KEY="$key" /usr/bin/time -v -o "$work/$name.time" "$client" run benches/workload-polling.yaml \
        --horde-url "$sim_url" --out "$work/$name-out" --progress none 2>"$work/$name.err" ||
        log "the client failed (seed $seed); see $work/$name.err"
    curl -sf "${sim_url%api/}sim/stats" >"$work/$name.stats.json"
    kill "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
    sim_pid=""
done

python3 benches/report.py --polling "$work" | tee "$work/results.md"
