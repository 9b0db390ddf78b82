#!/usr/bin/env bash
# Key-pool case of the benchmark (step 7 of benches/run.sh, also runnable alone):
# 2,000 images (100 requests of n = 20) on a sim shared with other users
# (--background-load) whose registered keys each have concurrency 30, run with
# 1, 2 and 4 keys. The background load is large next to 30 × keys, so each
# key's concurrency, not the workers, limits its throughput: N keys should
# bring about N times the throughput of one. Prints one JSON line per key count
# (wall time, throughput, TooManyPrompts, requests per key).
#
# Durations are shortened (sim worker latency 100 ms, rate limits off, submits
# every 50 ms, checks at most every 200 ms) so the three runs take about 80 s;
# the per-IP submit limit of the real Horde (90/min, 1,800 images/min at n = 20)
# is then not what is measured.
#
# Knobs: KEYPOOL_WORKERS (200), KEYPOOL_LATENCY (100ms), KEYPOOL_BACKGROUND (1200),
# KEYPOOL_KEYS ("1 2 4"), KEYPOOL_SEED (11), HORDE_BATCH_BIN (release binary).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${HORDE_BATCH_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/horde-batch}"
work="${KEYPOOL_WORK:-$repo/target/bench/key-pool}"
workers="${KEYPOOL_WORKERS:-200}"
latency="${KEYPOOL_LATENCY:-100ms}"
background="${KEYPOOL_BACKGROUND:-1200}"
seed="${KEYPOOL_SEED:-11}"
mkdir -p "$work"

for keys in ${KEYPOOL_KEYS:-1 2 4}; do
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
    matrix: {take: "1-100"}
    images: 20
YAML
    "$bin" sim --port 0 --workers "$workers" --latency "$latency" --seed "$seed" \
        --background-load "$background" --no-rate-limits "${sim_args[@]}" \
        > "$dir/sim.out" 2> "$dir/sim.err" &
    sim_pid=$!
    for _ in $(seq 1 100); do
        grep -q "http://" "$dir/sim.out" 2>/dev/null && break
        sleep 0.1
    done
    url="$(grep -o 'http://[^ ]*' "$dir/sim.out" | head -1)"
    start=$(date +%s.%N)
    HORDE_BATCH_SUBMIT_INTERVAL=50ms HORDE_BATCH_POLL_FLOOR=200ms \
        "$bin" run "$dir/batch.yaml" --horde-url "$url" "${key_args[@]}" --progress none \
        2> "$dir/run.log" || { echo "run with $keys key(s) failed; see $dir/run.log" >&2; kill "$sim_pid"; exit 1; }
    end=$(date +%s.%N)
    stats="$(curl -s "${url%/api*}/sim/stats")"
    users="$(curl -s "${url%/api*}/sim/users")"
    kill "$sim_pid"; wait "$sim_pid" 2>/dev/null || true
    python3 - "$keys" "$start" "$end" "$stats" "$users" <<'PY'
import json, sys
keys, start, end = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
stats, users = json.loads(sys.argv[4]), json.loads(sys.argv[5])
wall = end - start
print(json.dumps({
    "keys": keys,
    "images": stats["images_retrieved"],
    "wall_s": round(wall, 2),
    "images_per_s": round(stats["images_retrieved"] / wall, 2),
    "too_many_prompts": stats["too_many_prompts"],
    "rate_limited": stats["rate_limited"],
    "requests_per_key": [u["requests_made"] for u in users["users"] if not u["anonymous"]],
    "background_served": users["background_served"],
}))
PY
done
