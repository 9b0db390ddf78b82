#!/usr/bin/env bash
# Grid memory: `bash benches/grid-memory.sh` (about 5 minutes on 2 cores).
#
# Makes a 32x32 matrix of 1,024 images of 1024x1024 in an output folder (a
# fresh `horde-batch sim` with --no-rate-limits, 50 workers, no latency;
# `run --no-report`), then measures `horde-batch report <manifest>` with
# /usr/bin/time -v and prints its peak RSS. The report draws one 32x32 grid
# of 256x256 cells (about 200 MB of pixels); the
# images themselves would take 3 GB decoded at once. Target: under 300 MB.
# Not part of benches/run.sh or the test suite.
#
# Knobs (environment):
#   BENCH_GRID_BIN    the horde-batch binary (default: this tree's release
#                     build, built first; if set, nothing is built)
#   BENCH_GRID_SIDE   cells per side (32)
#   BENCH_GRID_SIZE   image width and height (1024)
#   BENCH_GRID_DIR    where the batch goes (target/bench/grid-memory; emptied first)
#   CARGO_TARGET_DIR
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
export CARGO_TARGET_DIR="$target_dir"
side="${BENCH_GRID_SIDE:-32}"
size="${BENCH_GRID_SIZE:-1024}"
work="${BENCH_GRID_DIR:-$repo/target/bench/grid-memory}"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

[[ -x /usr/bin/time ]] || { echo "benches/grid-memory.sh needs GNU time (/usr/bin/time)" >&2; exit 1; }

if [[ -z "${BENCH_GRID_BIN:-}" ]]; then
    log "building horde-batch (release)"
    cargo build --release --quiet --bin horde-batch
fi
bin="${BENCH_GRID_BIN:-$target_dir/release/horde-batch}"

rm -rf "$work"
mkdir -p "$work"
values="$(seq -s ', ' -f 'v%g' 0 $((side - 1)))"
cat >"$work/grid.yaml" <<EOF
version: 1
name: grid
output: {dir: out}
defaults:
  models: [stable_diffusion]
  params: {width: $size, height: $size, steps: 1}
jobs:
  - name: grid
    prompt: 'a \${x} \${y}'
    matrix: {x: [$values], y: [$values]}
EOF

sim_pid=""
cleanup() {
    if [[ -n "$sim_pid" ]]; then
        kill "$sim_pid" 2>/dev/null || true
        wait "$sim_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
"$bin" sim --port 0 --seed 7 --workers 50 --latency 0ms --no-rate-limits \
    >"$work/sim.out" 2>"$work/sim.err" &
sim_pid=$!
sim_url=""
for _ in $(seq 100); do
    line="$(head -n 1 "$work/sim.out" 2>/dev/null || true)"
    if [[ "$line" == "horde-batch sim listening on "* ]]; then
        sim_url="${line##* }"
        break
    fi
    kill -0 "$sim_pid" 2>/dev/null || break
    sleep 0.1
done
[[ -n "$sim_url" ]] || { echo "the simulator did not start:" >&2; cat "$work/sim.err" >&2; exit 1; }

log "making $((side * side)) images of ${size}x${size}"
env -u AI_HORDE_API_KEY -u AI_HORDE_URL "$bin" run "$work/grid.yaml" --horde-url "$sim_url" \
    --no-report --progress none 2>"$work/run.err" || { cat "$work/run.err" >&2; exit 1; }
cleanup
sim_pid=""

log "horde-batch report"
env -u AI_HORDE_API_KEY -u AI_HORDE_URL /usr/bin/time -v "$bin" report "$work/grid.yaml" \
    >/dev/null 2>"$work/report.time"
grids="$(find "$work/out/grids" -name '*.png' | wc -l)"
peak_kb="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/report.time")"
wall="$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/report.time")"
printf 'report of %d images of %dx%d (%d grid): peak RSS %d MB, wall %s\n' \
    "$((side * side))" "$size" "$size" "$grids" "$((peak_kb / 1024))" "$wall"
