#!/usr/bin/env bash
# Checks the simulated Horde against the official Python SDK (horde_sdk):
# builds horde-batch, starts `horde-batch sim` on a free loopback port, and
# runs scripts/sdk_fidelity.py against it. Exit 0 when the SDK generated and
# downloaded WebP images end to end, 1 otherwise.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="$repo/target/sdk-venv"

cargo build --quiet --bin horde-batch

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import horde_sdk" 2>/dev/null; then
    "$venv/bin/pip" install --quiet horde_sdk
fi

sim_out="$(mktemp)"
sim_err="$(mktemp)"
# `cargo run` execs the binary it just checked is fresh (a shared target
# directory may hold another branch's build), so $! is the simulator itself.
cargo run --quiet --bin horde-batch -- sim --port 0 --latency 200ms..600ms --seed 7 >"$sim_out" 2>"$sim_err" &
sim_pid=$!
cleanup() {
    kill "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
    rm -f "$sim_out" "$sim_err"
}
trap cleanup EXIT

url=""
for _ in $(seq 1 100); do
    line="$(head -n 1 "$sim_out" 2>/dev/null || true)"
    if [[ "$line" == "horde-batch sim listening on "* ]]; then
        url="${line##* }"
        break
    fi
    if ! kill -0 "$sim_pid" 2>/dev/null; then
        echo "sdk_fidelity: the simulator exited early:" >&2
        cat "$sim_err" >&2
        exit 1
    fi
    sleep 0.1
done
if [[ -z "$url" ]]; then
    echo "sdk_fidelity: the simulator did not report its URL" >&2
    exit 1
fi
echo "simulator at $url"

status=0
AI_HORDE_URL="$url" timeout 300 "$venv/bin/python" "$repo/scripts/sdk_fidelity.py" || status=$?
if [[ $status -ne 0 ]]; then
    echo "sdk_fidelity: FAILED (exit $status); simulator log:" >&2
    tail -n 20 "$sim_err" >&2
    exit 1
fi
echo "sdk_fidelity: passed"
