#!/usr/bin/env bash
# Shared limits (issue #23): three shards at once on one host against a sim
# with its default rate limits (2 submits a second and 90 a minute per IP),
# versus one process with the same total concurrency; then the same three
# shards made to look like separate hosts (each its own pacer folder, so only
# the adaptive rule paces them). Prints one JSON line per variant: wall time,
# images per second, accepted and rate-limited submits (from /sim/stats), and
# for the separate hosts the 429s after the first minute.
#
# Knobs: SHARDS_IMAGES (90 per shard), SHARDS_MAX_N (1: one submit per image),
# SHARDS_WORKERS (20), SHARDS_LATENCY (1s), SHARDS_SEED (23),
# HORDE_BATCH_BIN (release binary).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${HORDE_BATCH_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/horde-batch}"
work="${SHARDS_WORK:-$repo/target/bench/shards}"
per_shard="${SHARDS_IMAGES:-90}"
max_n="${SHARDS_MAX_N:-1}"
workers="${SHARDS_WORKERS:-20}"
latency="${SHARDS_LATENCY:-1s}"
seed="${SHARDS_SEED:-23}"
total=$((per_shard * 3))
mkdir -p "$work"

# Counts of POST generate/async answers: "accepted limited".
submits() {
    curl -s "${1%/api*}/sim/stats" | python3 -c '
import json, sys
s = json.load(sys.stdin)
calls = s["calls"].get("POST /api/v2/generate/async", {})
print(calls.get("202", 0), calls.get("429", 0) - s["too_many_prompts"])'
}

start_sim() {
    "$bin" sim --port 0 --workers "$workers" --latency "$latency" --seed "$seed" \
        > "$1/sim.out" 2> "$1/sim.err" &
    sim_pid=$!
    for _ in $(seq 1 100); do
        grep -q "http://" "$1/sim.out" 2>/dev/null && break
        sleep 0.1
    done
    sim_url="$(grep -o 'http://[^ ]*' "$1/sim.out" | head -1)"
}

manifest() {
    cat > "$1/batch.yaml" <<YAML
version: 1
name: shards
defaults:
  models: [stable_diffusion]
  params: {width: 64, height: 64, steps: 20}
run: {max_n: $max_n}
jobs:
  - name: take
    prompt: "a small red cube, take \${take}"
    matrix: {take: "1-$total"}
    images: 1
YAML
}

# variant NAME SHARED(yes|no) PROCESSES
variant() {
    local name="$1" shared="$2" processes="$3" dir="$work/$1"
    rm -rf "$dir"
    mkdir -p "$dir"
    manifest "$dir"
    start_sim "$dir"
    local began now minute_mark="" pids=()
    began=$(date +%s.%N)
    for i in $(seq 1 "$processes"); do
        local pacer="$dir/pacer"
        [ "$shared" = no ] && pacer="$dir/pacer-$i"
        local shard_args=()
        [ "$processes" -gt 1 ] && shard_args=(--shard "$i/$processes")
        HORDE_BATCH_PACER_DIR="$pacer" "$bin" run "$dir/batch.yaml" --horde-url "$sim_url" \
            --no-report --progress none "${shard_args[@]}" \
            > "$dir/run-$i.out" 2> "$dir/run-$i.err" &
        pids+=($!)
    done
    # The counts at the end of the first minute, for the separate hosts.
    while kill -0 "${pids[@]}" 2>/dev/null; do
        now=$(date +%s.%N)
        if [ -z "$minute_mark" ] && python3 -c "import sys; sys.exit(0 if $now - $began >= 60 else 1)"; then
            minute_mark="$(submits "$sim_url")"
        fi
        sleep 0.5
    done
    local failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    local ended
    ended=$(date +%s.%N)
    read -r accepted limited <<< "$(submits "$sim_url")"
    kill "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
    python3 - "$name" "$began" "$ended" "$accepted" "$limited" "${minute_mark:-}" "$failed" "$total" <<'PY'
import json, sys
name, began, ended, accepted, limited, minute, failed, total = sys.argv[1:]
wall = float(ended) - float(began)
line = {"variant": name, "wall_s": round(wall, 1), "images_per_s": round(int(total) / wall, 3),
        "submits": int(accepted), "rate_limited": int(limited),
        "rate_limited_pct": round(100 * int(limited) / max(1, int(accepted)), 1),
        "failed": failed == "1"}
if minute:
    a, l = map(int, minute.split())
    after = int(accepted) - a
    line["rate_limited_after_first_minute"] = int(limited) - l
    line["rate_limited_pct_after_first_minute"] = round(100 * (int(limited) - l) / max(1, after), 1)
print(json.dumps(line))
PY
}

variant one-process yes 1 | tee "$work/one.json"
variant three-shards-one-host yes 3 | tee "$work/shared.json"
variant three-shards-separate-hosts no 3 | tee "$work/separate.json"
python3 - "$work/one.json" "$work/shared.json" <<'PY'
import json, sys
one, shared = (json.load(open(p)) for p in sys.argv[1:])
print(json.dumps({"throughput_ratio_shards_vs_one": round(shared["images_per_s"] / one["images_per_s"], 3)}))
PY
