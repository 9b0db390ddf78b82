#!/usr/bin/env bash
# Key-pool case of the benchmark (step 7 of benches/run.sh, also runnable alone),
# in two modes (KEYPOOL_MODE):
#
# tuned (the default): 2,000 images (100 requests of n = 20) on a sim shared
# with other users (--background-load) whose registered keys each have
# concurrency 30, run with 1, 2 and 4 keys. The background load is large next
# to 30 x keys, so each key's concurrency, not the workers, limits its
# throughput: N keys should bring about N times the throughput of one.
# Durations are shortened (sim worker latency 100 ms, rate limits off, submits
# every 50 ms, checks at most every 200 ms) so the three runs take about 80 s;
# the per-IP submit limit of the real Horde (90/min, 1,800 images/min at n = 20)
# is then not what is measured.
#
# defaults (issue #23's case): 120 images (6 jobs of 20, max_n 20) on a sim
# with 100 workers at 1 s per image and --background-load 2970, its rate limits
# on, and the client with its DEFAULT settings (no tuning variables), with 1
# and 2 keys. Each key's share of the workers is 30 / (2970 + 30 x keys), so
# the ideal is about 1 image a second per key (120 s for one key); takes about
# 3 minutes.
#
# Prints one JSON line per key count (wall time, throughput, ÷ ideal,
# TooManyPrompts, rate-limit 429s, Horde API calls per image, requests per key).
#
# Knobs: KEYPOOL_MODE (tuned), KEYPOOL_WORKERS (200; 100 in defaults),
# KEYPOOL_LATENCY (100ms; 1s), KEYPOOL_BACKGROUND (1200; 2970), KEYPOOL_KEYS
# ("1 2 4"; "1 2"), KEYPOOL_SEED (11), HORDE_BATCH_BIN (release binary).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${HORDE_BATCH_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/horde-batch}"
mode="${KEYPOOL_MODE:-tuned}"
work="${KEYPOOL_WORK:-$repo/target/bench/key-pool-$mode}"
seed="${KEYPOOL_SEED:-11}"
case "$mode" in
    tuned)
        workers="${KEYPOOL_WORKERS:-200}"
        latency="${KEYPOOL_LATENCY:-100ms}"
        background="${KEYPOOL_BACKGROUND:-1200}"
        key_counts="${KEYPOOL_KEYS:-1 2 4}"
        takes=100
        limits=(--no-rate-limits)
        tuning=(HORDE_BATCH_SUBMIT_INTERVAL=50ms HORDE_BATCH_POLL_FLOOR=200ms)
        ;;
    defaults)
        workers="${KEYPOOL_WORKERS:-100}"
        latency="${KEYPOOL_LATENCY:-1s}"
        background="${KEYPOOL_BACKGROUND:-2970}"
        key_counts="${KEYPOOL_KEYS:-1 2}"
        takes=6
        limits=()
        tuning=()
        ;;
    *) echo "KEYPOOL_MODE is tuned or defaults, not $mode" >&2; exit 2 ;;
esac
mkdir -p "$work"

for keys in $key_counts; do
    dir="$work/keys-$keys"
    rm -rf "$dir"
    mkdir -p "$dir"
    sim_args=()
    key_args=()
    for i in $(seq 1 "$keys"); do
        # Made-up keys of the sim only; they live in files, never on a command line of the client.
        key="bench-pool-key-$i-$RANDOM$RANDOM"
        printf '%s\n' "$key" > "$dir/key-$i.txt"
        sim_args+=(--api-key "$key,concurrency=30")
        key_args+=(--api-key-file "$dir/key-$i.txt")
    done
    cat > "$dir/batch.yaml" <<YAML
version: 1
name: key-pool
defaults:
  models: [stable_diffusion]
  params: {width: 64, height: 64, steps: 20, sampler_name: k_euler_a, cfg_scale: 7}
run: {max_n: 20}
jobs:
  - name: take
    prompt: "a small red cube, take \${take}"
    matrix: {take: "1-$takes"}
    images: 20
YAML
    "$bin" sim --port 0 --workers "$workers" --latency "$latency" --seed "$seed" \
        --background-load "$background" ${limits[@]+"${limits[@]}"} "${sim_args[@]}" \
        > "$dir/sim.out" 2> "$dir/sim.err" &
    sim_pid=$!
    for _ in $(seq 1 100); do
        grep -q "http://" "$dir/sim.out" 2>/dev/null && break
        sleep 0.1
    done
    url="$(grep -o 'http://[^ ]*' "$dir/sim.out" | head -1)"
    start=$(date +%s.%N)
    env ${tuning[@]+"${tuning[@]}"} \
        "$bin" run "$dir/batch.yaml" --horde-url "$url" "${key_args[@]}" --progress none \
        2> "$dir/run.log" || { echo "run with $keys key(s) failed; see $dir/run.log" >&2; kill "$sim_pid"; exit 1; }
    end=$(date +%s.%N)
    stats="$(curl -s "${url%/api*}/sim/stats")"
    users="$(curl -s "${url%/api*}/sim/users")"
    kill "$sim_pid"; wait "$sim_pid" 2>/dev/null || true
    python3 - "$keys" "$start" "$end" "$stats" "$users" "$workers" "$latency" "$background" <<'PY'
import json, re, sys
keys, start, end = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
stats, users = json.loads(sys.argv[4]), json.loads(sys.argv[5])
workers, background = int(sys.argv[6]), int(sys.argv[8])
number, unit = re.fullmatch(r"([0-9.]+)(ms|s)", sys.argv[7]).groups()
latency_s = float(number) / (1000 if unit == "ms" else 1)
wall = end - start
images = stats["images_retrieved"]
# Each key keeps 30 images waiting among the background's: its share of the workers.
ideal_per_s = keys * 30 / (background + 30 * keys) * workers / latency_s
calls = sum(sum(by_status.values()) for by_status in stats["calls"].values())
print(json.dumps({
    "keys": keys,
    "images": images,
    "wall_s": round(wall, 2),
    "images_per_s": round(images / wall, 2),
    "of_ideal": round(images / wall / ideal_per_s, 3),
    "api_calls_per_image": round(calls / max(images, 1), 3),
    "too_many_prompts": stats["too_many_prompts"],
    "rate_limited": stats["rate_limited"],
    "requests_per_key": [u["requests_made"] for u in users["users"] if not u["anonymous"]],
    "background_served": users["background_served"],
}))
PY
done
