"""Time from process start to the first submit of a `horde-batch run`.

Used by benches/run.sh: `first_submit.py -- horde-batch run ...` starts the
command with debug logs in JSON (RUST_LOG=horde_batch=debug, --log-format
json must be among its arguments), reads its stderr as it comes, and notes
when each milestone's log line arrives, counted from just before the process
was started:

- `run_started`: the "run started" line (ledger and output folder open, the
  key's concurrency read from the Horde);
- `first_submit`: the first "submitted" line (the Horde accepted the first
  POST and its id is flushed to the ledger; so this includes one submit's
  round trip and one ledger flush).

It then interrupts the run (SIGINT, which cancels what it submitted) and
prints one JSON object with the seconds, the exit code and the process's
peak RSS and CPU seconds (from wait4).
"""

import json
import os
import signal
import subprocess
import sys
import time

TIMEOUT_S = 120


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] != "--":
        print("usage: first_submit.py -- COMMAND...", file=sys.stderr)
        return 2
    command = sys.argv[2:]
    env = dict(os.environ, RUST_LOG="horde_batch=debug")
    start = time.monotonic()
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = {}
    for raw in process.stderr:
        now = time.monotonic() - start
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        message = line.get("fields", {}).get("message", "")
        if message == "run started" and "run_started" not in seen:
            seen["run_started"] = now
        if message == "submitted":
            seen["first_submit"] = now
            break
        if now > TIMEOUT_S:
            break
    process.send_signal(signal.SIGINT)
    # Drain stderr so the run can finish cancelling and exit.
    for _ in process.stderr:
        pass
    _, status, usage = os.wait4(process.pid, 0)
    result = {
        "run_started_s": round(seen["run_started"], 3) if "run_started" in seen else None,
        "first_submit_s": round(seen["first_submit"], 3) if "first_submit" in seen else None,
        "exit_code": os.waitstatus_to_exitcode(status),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))
    return 0 if "first_submit" in seen else 1


if __name__ == "__main__":
    sys.exit(main())
