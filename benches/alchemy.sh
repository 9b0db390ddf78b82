#!/usr/bin/env bash
# The alchemy case: `bash benches/alchemy.sh` (about 1.5 minutes).
#
# A fresh `horde-batch sim` with its default limits and timings (20 image
# workers at 1 s per image; 8 alchemists at 2 s per form, the real server's
# observed pace, an upscale 2 s per 512² tile) and one registered key.
# horde-batch runs benches/alchemy.yaml (60 images of 512², each with
# caption, nsfw and RealESRGAN_x2plus: 180 forms) the way a user runs it
# (default pacing: 88 interrogation submits a minute; report page on). The
# sim's /sim/stats gives the alchemy calls and the kudos charged per form;
# /usr/bin/time the wall time, client CPU and peak RSS. The table goes to
# stdout and to target/bench/alchemy/results.md.
#
# Knobs (environment): BENCH_ALCHEMISTS (8), CARGO_TARGET_DIR.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
export CARGO_TARGET_DIR="$target_dir"
bin="$target_dir/release/horde-batch"
work="$repo/target/bench/alchemy"
alchemists="${BENCH_ALCHEMISTS:-8}"
# A made-up key: the sim registers it; nothing else ever sees it.
key="bench-alchemy-key-0123456789"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
for tool in /usr/bin/time curl python3; do
    command -v "$tool" >/dev/null || { echo "benches/alchemy.sh needs $tool" >&2; exit 1; }
done
log "building horde-batch (release)"
cargo build --release --quiet --bin horde-batch
rm -rf "$work"
mkdir -p "$work"

"$bin" sim --port 0 --workers 20 --latency 1s --seed 7 --alchemists "$alchemists" \
    --api-key "$key" >"$work/sim.out" 2>"$work/sim.err" &
sim_pid=$!
trap 'kill "$sim_pid" 2>/dev/null || true' EXIT
sim_url=""
for _ in $(seq 1 100); do
    line="$(head -n 1 "$work/sim.out" 2>/dev/null || true)"
    if [[ "$line" == "horde-batch sim listening on "* ]]; then
        sim_url="${line##* }"
        break
    fi
    sleep 0.1
done
[[ -n "$sim_url" ]] || { cat "$work/sim.err" >&2; exit 1; }

log "60 images, 180 forms, default settings"
AI_HORDE_API_KEY="$key" /usr/bin/time -v -o "$work/run.time" \
    "$bin" run benches/alchemy.yaml --horde-url "$sim_url" --out "$work/out" \
    --progress json >"$work/run.out" 2>"$work/run.err"
curl -sf "${sim_url%api/}sim/stats" >"$work/stats.json"

python3 - "$work" <<'PY' | tee "$work/results.md"
import json, re, sys
work = sys.argv[1]
stats = json.load(open(f"{work}/stats.json"))
time = open(f"{work}/run.time").read()
def field(name):
    return re.search(rf"{re.escape(name)}: (.*)", time).group(1).strip()
wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)")
cpu = float(field("User time (seconds)")) + float(field("System time (seconds)"))
rss = int(field("Maximum resident set size (kbytes)")) / 1024
calls = {k: sum(v.values()) for k, v in stats["calls"].items() if "interrogate" in k}
posts = calls.get("POST /api/v2/interrogate/async", 0)
reads = calls.get("GET /api/v2/interrogate/status/{id}", 0)
deletes = calls.get("DELETE /api/v2/interrogate/status/{id}", 0)
forms = stats["alchemy_forms_delivered"]
kudos = stats["alchemy_kudos_charged"]
print("| figure | value |")
print("| --- | --- |")
print(f"| forms delivered | {forms} (of 180) |")
print(f"| interrogation calls | {posts} POST, {reads} status, {deletes} DELETE |")
print(f"| API calls per form | {(posts + reads + deletes) / max(forms, 1):.3f} |")
print(f"| kudos per form | {kudos / max(forms, 1):.2f} ({kudos:.0f} in all) |")
print(f"| 429s | {stats['rate_limited']} rate limit, {stats['too_many_prompts']} TooManyPrompts |")
print(f"| forms left on the Horde, unread | {stats['alchemy_forms_open']} open, {stats['alchemy_forms_unretrieved']} unread |")
print(f"| wall time | {wall} |")
print(f"| client CPU, peak RSS | {cpu:.2f} s, {rss:.0f} MB |")
PY
