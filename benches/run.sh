#!/usr/bin/env bash
# The horde-batch benchmark: `bash benches/run.sh` (about 10 minutes).
#
# Builds horde-batch (release) and benches/ledger-prep, installs the official
# Python SDK (horde_sdk) into target/bench-venv, then, each against a fresh
# `horde-batch sim` on loopback:
#   1. horde-batch runs benches/workload-1k.yaml (1,000 images: 50 requests of
#      n = 20, default settings) on 20 workers at 1 s per image, with
#      --no-report, then `report` makes its page (timed apart), then the
#      default path as a user runs it, page on (grid cells made as each image
#      is saved; the headline CPU figure);
#   2. horde_sdk runs the same 50 requests as its async example does
#      (asyncio.gather, no spacing; 429s retried after 1 s);
#   3. horde_sdk again, spaced 0.7 s apart with its own `delay=` argument;
#   4. `horde-batch plan benches/plan-1m.yaml --json --max-jobs 1000000`;
#   5. resume: a ledger of benches/resume-100k.yaml (100,000 one-image jobs,
#      or BENCH_RESUME_JOBS) with the first half done; time from process start
#      to the first submit;
#   6. the polling case (benches/polling.sh, also runnable alone): 40 small
#      images as 4 requests of n = 10 with a registered key, on a sim with its
#      DEFAULT settings, whose wait_time reads 0 while they wait; seeds 1..3.
#   7. the key-pool case (benches/key_pool.sh, also runnable alone): 2,000
#      images on a sim with background load, concurrency 30 per key, run with
#      1, 2 and 4 keys; throughput ratios and TooManyPrompts; then the same
#      script's defaults mode (issue #23's case: 120 images, sim limits on,
#      the client's default settings, 1 and 2 keys; about 3 minutes).
# Client CPU and peak RSS come from /usr/bin/time -v, HTTP calls from the
# sim's /sim/stats. Results: target/bench/results.md (the table) and
# target/bench/results.json; logs and outputs stay under target/bench/. The
# figures this run measured replace their rows, with its date and commit, in
# the current-figures table at the top of benches/README.md.
#
# Knobs (environment): BENCH_WORKERS (20), BENCH_LATENCY (1s), BENCH_SEED (7),
# BENCH_RESUME_JOBS (100000; at most 100000, or 1000000 for benches/resume-1m.yaml), BENCH_RESUME_DONE (half of them), BENCH_SKIP_POLLING=1 (skips step 6),
# BENCH_SKIP_KEY_POOL=1 (skips step 7),
# BENCH_POLLING_SEEDS (1 2 3), BENCH_SKIP_SDK_EXAMPLE=1 (skips step 2, the
# slowest), BENCH_EATMYDATA=1 (also runs step 1 under `eatmydata`, which
# turns fsync off, to show what durability costs; needs the Debian package
# eatmydata), HORDE_SDK_SPEC (horde_sdk==0.18.0), CARGO_TARGET_DIR.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
export CARGO_TARGET_DIR="$target_dir"
bin="$target_dir/release/horde-batch"
prep="$target_dir/release/ledger-prep"
work="$repo/target/bench"
venv="$repo/target/bench-venv"
python="$venv/bin/python"

workers="${BENCH_WORKERS:-20}"
latency="${BENCH_LATENCY:-1s}"
seed="${BENCH_SEED:-7}"
resume_jobs="${BENCH_RESUME_JOBS:-100000}"
resume_done="${BENCH_RESUME_DONE:-$((resume_jobs / 2))}"
sdk_spec="${HORDE_SDK_SPEC:-horde_sdk==0.18.0}"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

for tool in /usr/bin/time curl python3; do
    command -v "$tool" >/dev/null || { echo "benches/run.sh needs $tool" >&2; exit 1; }
done

# A previous run's files go first. This machine's root file system is ext4
# without a journal, where creating a file scans past every inode deleted in
# the last 30 s; so after deleting many files we let 35 s pass before
# measuring anything that writes files (see benches/README.md, "Noise").
deleted_at=0
if [[ -e "$work" ]]; then
    log "removing the previous run's files in $work"
    rm -rf "$work"
    deleted_at=$(date +%s)
fi
mkdir -p "$work"

log "building horde-batch and ledger-prep (release)"
cargo build --release --quiet --bin horde-batch
cargo build --release --quiet --manifest-path benches/ledger-prep/Cargo.toml

if ! "$python" -c "import horde_sdk" 2>/dev/null; then
    log "installing $sdk_spec into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$sdk_spec"
fi

# The machine and the code measured.
{
    echo "{"
    echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
    echo "  \"nproc\": $(nproc),"
    echo "  \"mem_total_kb\": $(awk '/MemTotal/ {print $2}' /proc/meminfo),"
    echo "  \"cpu_model\": \"$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)\","
    echo "  \"kernel\": \"$(uname -r)\","
    echo "  \"load_average_at_start\": \"$(cut -d' ' -f1-3 /proc/loadavg)\","
    echo "  \"commit\": \"$(git rev-parse --short HEAD)$([[ -z "$(git status --porcelain -- src Cargo.toml Cargo.lock)" ]] || echo ' + uncommitted changes in src')\","
    echo "  \"rustc\": \"$(rustc --version)\","
    echo "  \"python\": \"$("$python" --version 2>&1)\","
    echo "  \"horde_sdk\": \"$("$python" -c 'import importlib.metadata as m; print(m.version("horde_sdk"))')\","
    echo "  \"resume_done\": $resume_done,"
    echo "  \"resume_jobs\": $resume_jobs,"
    echo "  \"sim\": {\"workers\": $workers, \"latency\": \"$latency\", \"seed\": $seed}"
    echo "}"
} >"$work/machine.json"

sim_pid=""
sim_url=""
start_sim() { # workers latency name
    local out="$work/$3.sim.out"
    "$bin" sim --port 0 --workers "$1" --latency "$2" --seed "$seed" >"$out" 2>"$work/$3.sim.err" &
    sim_pid=$!
    sim_url=""
    for _ in $(seq 1 100); do
        local line
        line="$(head -n 1 "$out" 2>/dev/null || true)"
        if [[ "$line" == "horde-batch sim listening on "* ]]; then
            sim_url="${line##* }"
            return
        fi
        kill -0 "$sim_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "the simulator did not start:" >&2
    cat "$work/$3.sim.err" >&2
    exit 1
}
stop_sim() { # name: saves /sim/stats, then stops the simulator
    curl -sf "${sim_url%api/}sim/stats" >"$work/$1.stats.json"
    kill "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
    sim_pid=""
}
cleanup() {
    if [[ -n "$sim_pid" ]]; then
        kill "$sim_pid" 2>/dev/null || true
        wait "$sim_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

"$bin" plan benches/workload-1k.yaml --list --json >"$work/workload-1k.jobs.jsonl"

log "plan of 1,000,000 jobs"
/usr/bin/time -v -o "$work/plan-1m.time" "$bin" plan benches/plan-1m.yaml --json --max-jobs 1000000 >"$work/plan-1m.json"

if ((deleted_at > 0)); then
    wait_s=$((deleted_at + 35 - $(date +%s)))
    if ((wait_s > 0)); then
        log "waiting ${wait_s}s after the deletion (ext4 noise, see above)"
        sleep "$wait_s"
    fi
fi

log "horde-batch: 1,000 images, $workers workers, $latency per image"
start_sim "$workers" "$latency" hb
# The run alone (--no-report), then the report page on its own: its
# grids of 1,000 new images cost CPU of their own (see benches/README.md). The
# default path, page on, is measured after them, and is the headline figure.
/usr/bin/time -v -o "$work/hb.time" "$bin" run benches/workload-1k.yaml --no-report \
    --horde-url "$sim_url" --out "$work/hb-out" 2>"$work/hb.err"
stop_sim hb
tail -n 2 "$work/hb.err" >&2
log "horde-batch report of those 1,000 images (grids drawn afresh, their images decoded)"
/usr/bin/time -v -o "$work/hb-report.time" "$bin" report benches/workload-1k.yaml \
    --out "$work/hb-out" >/dev/null 2>"$work/hb-report.err"
# The default path, as a user runs it: the same run with its report page.
log "horde-batch: the same 1,000 images as a user runs them (report page on)"
start_sim "$workers" "$latency" hb-default
/usr/bin/time -v -o "$work/hb-default.time" "$bin" run benches/workload-1k.yaml \
    --horde-url "$sim_url" --out "$work/hb-default-out" 2>"$work/hb-default.err"
stop_sim hb-default

if [[ "${BENCH_EATMYDATA:-0}" == 1 ]] && command -v eatmydata >/dev/null; then
    log "horde-batch again under eatmydata (fsync and fdatasync are no-ops): what durability costs in CPU"
    start_sim "$workers" "$latency" hb-nofsync
    /usr/bin/time -v -o "$work/hb-nofsync.time" eatmydata "$bin" run benches/workload-1k.yaml \
        --no-report --horde-url "$sim_url" --out "$work/hb-nofsync-out" 2>"$work/hb-nofsync.err"
    stop_sim hb-nofsync
fi

if [[ "${BENCH_SKIP_SDK_EXAMPLE:-0}" != 1 ]]; then
    log "horde_sdk as in its example (gather, no spacing): slow, the 429s pile up"
    start_sim "$workers" "$latency" sdk
    AI_HORDE_URL="$sim_url" /usr/bin/time -v -o "$work/sdk.time" timeout 900 "$python" benches/sdk_workload.py \
        "$work/sdk-out" --delay-step 0 <"$work/workload-1k.jobs.jsonl" >"$work/sdk.json" 2>"$work/sdk.err" ||
        log "horde_sdk (example) failed; see $work/sdk.err"
    stop_sim sdk
fi

log "horde_sdk spaced 0.7 s apart (delay=)"
start_sim "$workers" "$latency" sdk-spaced
AI_HORDE_URL="$sim_url" /usr/bin/time -v -o "$work/sdk-spaced.time" "$python" benches/sdk_workload.py \
    "$work/sdk-spaced-out" --delay-step 0.7 <"$work/workload-1k.jobs.jsonl" >"$work/sdk-spaced.json" 2>"$work/sdk-spaced.err" ||
    log "horde_sdk (spaced) failed; see $work/sdk-spaced.err"
stop_sim sdk-spaced

log "resume: preparing a ledger of $resume_jobs jobs with $resume_done done"
start_sim 50 10ms resume
# The first 30 jobs run for real; keys do not depend on the axes' lengths.
if [[ "$resume_jobs" == 1000000 ]]; then
    sed -e 's/a: "1-1000"/a: "1-1"/' -e 's/b: "1-1000"/b: "1-30"/' benches/resume-1m.yaml >"$work/resume-prefix.yaml"
    cp benches/resume-1m.yaml "$work/resume-jobs.yaml"
else
    sed 's/"1-100000"/"1-30"/' benches/resume-100k.yaml >"$work/resume-prefix.yaml"
    sed "s/\"1-100000\"/\"1-$resume_jobs\"/" benches/resume-100k.yaml >"$work/resume-jobs.yaml"
fi
"$bin" run "$work/resume-prefix.yaml" --horde-url "$sim_url" --out "$work/resume" -q 2>"$work/resume-prefix.err"
"$prep" "$work/resume-jobs.yaml" "$work/resume" "$resume_done" >&2
sync
log "resume: time to first submit (3 runs)"
for attempt in 1 2 3; do
    "$python" benches/first_submit.py -- "$bin" run "$work/resume-jobs.yaml" --max-jobs "$resume_jobs" \
        --horde-url "$sim_url" --out "$work/resume" --log-format json --no-report >"$work/resume-$attempt.json"
    cat "$work/resume-$attempt.json" >&2
done
stop_sim resume

if [[ "${BENCH_SKIP_POLLING:-0}" != 1 ]]; then
    log "polling case (benches/polling.sh): 40 images, 4 requests of n = 10, sim defaults"
    BENCH_POLLING_DIR="$work/polling" BENCH_POLLING_SIM="$bin" bash benches/polling.sh >/dev/null
fi

if [[ "${BENCH_SKIP_KEY_POOL:-0}" != 1 ]]; then
    log "key-pool case (benches/key_pool.sh): 2,000 images, background load, 1, 2 and 4 keys of concurrency 30"
    KEYPOOL_WORK="$work/key-pool" HORDE_BATCH_BIN="$bin" bash benches/key_pool.sh >"$work/key-pool.jsonl"
    cat "$work/key-pool.jsonl" >&2
    log "key-pool case with default settings (KEYPOOL_MODE=defaults): 120 images, 1 and 2 keys"
    KEYPOOL_MODE=defaults KEYPOOL_WORK="$work/key-pool-defaults" HORDE_BATCH_BIN="$bin" bash benches/key_pool.sh >"$work/key-pool-defaults.jsonl"
    cat "$work/key-pool-defaults.jsonl" >&2
fi

cut -d' ' -f1-3 /proc/loadavg >"$work/loadavg-end.txt"
"$python" benches/report.py "$work" >"$work/results.md"
cat "$work/results.md"
"$python" benches/report.py --update-readme "$work" benches/README.md
log "done: $work/results.md, $work/results.json; current figures updated in benches/README.md"
