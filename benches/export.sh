#!/usr/bin/env bash
# Export (issue #23): a 10,000-image batch (64x64, made on the sim with its
# rate limits off) exported to each format; then each export run again (a
# rerun of a finished export, which checks every shard and writes nothing).
# Prints one JSON line per format: images per second, wall and CPU seconds,
# peak RSS, bytes written; and the rerun's wall time.
#
# Knobs: EXPORT_JOBS (200) x EXPORT_IMAGES (50 per job), EXPORT_SIZE (64:
# 64x64 images; 512 for images of a real size), EXPORT_SHARD_SIZE (10000),
# HORDE_BATCH_BIN (release binary), EXPORT_WORK (folder).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${HORDE_BATCH_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/horde-batch}"
work="${EXPORT_WORK:-$repo/target/bench/export}"
jobs="${EXPORT_JOBS:-200}"
per_job="${EXPORT_IMAGES:-50}"
shard_size="${EXPORT_SHARD_SIZE:-10000}"
size="${EXPORT_SIZE:-64}"
rm -rf "$work" && mkdir -p "$work"
cd "$work"

cat > batch.yaml <<YAML
version: 1
name: export
defaults:
  models: [stable_diffusion]
  params: {width: $size, height: $size, steps: 4}
jobs:
  - name: grid
    prompt: "a small red cube, take \${take}"
    matrix: {take: "1-$jobs"}
    images: $per_job
YAML

"$bin" sim --port 0 --no-rate-limits --workers 200 --latency 1ms --seed 23 > sim.out 2> sim.err &
sim_pid=$!
trap 'kill "$sim_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    grep -q "http://" sim.out 2>/dev/null && break
    sleep 0.1
done
sim_url="$(grep -o 'http://[^ ]*' sim.out | head -1)"
HORDE_BATCH_SUBMIT_INTERVAL=2ms HORDE_BATCH_POLL_FLOOR=50ms \
    "$bin" run batch.yaml --horde-url "$sim_url" --no-report -q
images=$((jobs * per_job))

for format in webdataset parquet hub; do
    /usr/bin/time -f "%e %U %S %M" -o time.txt \
        "$bin" export batch.yaml --format "$format" --shard-size "$shard_size" -q 2> export.err
    read -r wall user sys rss < time.txt
    bytes="$(du -sb "out/export-$format" | cut -f1)"
    /usr/bin/time -f "%e" -o rerun.txt \
        "$bin" export batch.yaml --format "$format" --shard-size "$shard_size" -q 2>> export.err
    EXPORT_SIZE_SHOWN="$size" python3 - "$format" "$images" "$wall" "$user" "$sys" "$rss" "$bytes" "$(cat rerun.txt)" <<'PY'
import json, os, sys
fmt, images, wall, user, sys_, rss, size, rerun = sys.argv[1:]
images, wall, cpu = int(images), float(wall), float(user) + float(sys_)
print(json.dumps({"format": fmt, "images": images, "size": int(os.environ["EXPORT_SIZE_SHOWN"]), "wall_s": wall,
                  "images_per_s": round(images / wall), "cpu_s": round(cpu, 2),
                  "user_s": float(user), "sys_s": float(sys_),
                  "peak_rss_mb": round(int(rss) / 1024, 1), "bytes": int(size),
                  "rerun_wall_s": float(rerun)}))
PY
done
