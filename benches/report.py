"""Turn the files benches/run.sh leaves in its work folder into tables.

`report.py WORK_DIR` prints Markdown (the tables of benches/README.md) and
writes WORK_DIR/results.json with every number. Reads: machine.json; for each
client (hb, sdk, sdk-spaced) NAME.time (/usr/bin/time -v), NAME.stats.json
(the sim's /sim/stats) and, for the SDK, NAME.json (sdk_workload.py's
summary); plan-1m.time; resume-*.json (first_submit.py); and, when present,
the polling case's folder WORK_DIR/polling (benches/polling.sh).

`report.py --polling DIR` prints only the polling case's table for DIR (what
benches/polling.sh leaves: meta.json, seed-N.time, seed-N.stats.json) and
writes DIR/results.json.

`report.py --update-readme WORK_DIR README` rewrites the current-results
table of README (benches/README.md), between the CURRENT_START and
CURRENT_END marker comments, from WORK_DIR/results.json: each figure this run
measured replaces its row, stamped with the run's date and commit; rows this
run did not measure (a skipped step) keep their earlier figure and stamp.
"""

import json
import re
import statistics
import sys
from pathlib import Path

CLIENTS = [
    ("hb", "horde-batch"),
    ("hb-nofsync", "horde-batch under eatmydata (no fsync; for attribution)"),
    ("sdk", "horde_sdk, as its example (gather, 429s retried after 1 s)"),
    ("sdk-spaced", "horde_sdk, spaced 0.7 s (delay=)"),
]
# Endpoints in the order a request meets them.
ENDPOINTS = [
    ("GET /api/v2/find_user", "find_user"),
    ("POST /api/v2/generate/async", "submit"),
    ("GET /api/v2/generate/check/{id}", "check"),
    ("GET /api/v2/generate/status/{id}", "status"),
    ("DELETE /api/v2/generate/status/{id}", "cancel"),
]


# The current-results table of benches/README.md sits between these lines.
CURRENT_START = "<!-- bench:current:start -->"
CURRENT_END = "<!-- bench:current:end -->"
CURRENT_HEADER = ["| figure | value | target | measured (date, commit) |", "|---|---|---|---|"]


def seconds(text: str) -> float:
    """'1s', '500ms', '1.5s' → seconds."""
    match = re.fullmatch(r"([\d.]+)\s*(ms|s)", text.strip())
    if not match:
        raise ValueError(f"cannot read the latency {text!r}")
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value


def read_time(path: Path) -> dict | None:
    """The numbers of `/usr/bin/time -v`."""
    if not path.exists():
        return None
    fields = {}
    for line in path.read_text().splitlines():
        key, _, value = line.strip().rpartition(": ")
        fields[key] = value
    wall = fields["Elapsed (wall clock) time (h:mm:ss or m:ss)"]
    parts = [float(p) for p in wall.split(":")]
    wall_s = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return {
        "wall_s": wall_s,
        "cpu_s": float(fields["User time (seconds)"]) + float(fields["System time (seconds)"]),
        "user_s": float(fields["User time (seconds)"]),
        "sys_s": float(fields["System time (seconds)"]),
        "peak_rss_mb": int(fields["Maximum resident set size (kbytes)"]) / 1024,
        "exit_status": int(fields["Exit status"]),
    }


def read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def client_numbers(work: Path, name: str, ideal_s: float) -> dict | None:
    time = read_time(work / f"{name}.time")
    stats = read_json(work / f"{name}.stats.json")
    if time is None or stats is None:
        return None
    images = stats["images_retrieved"]
    per_image = lambda count: count / images if images else float("nan")  # noqa: E731
    calls = stats["calls"]
    by_endpoint = {}
    for endpoint, label in ENDPOINTS:
        for status, count in sorted(calls.get(endpoint, {}).items()):
            by_endpoint[f"{label} {status}"] = count
    other = {
        f"{endpoint} {status}": count
        for endpoint, statuses in calls.items()
        if endpoint not in dict(ENDPOINTS)
        for status, count in statuses.items()
    }
    api_calls = sum(sum(statuses.values()) for statuses in calls.values())
    numbers = {
        "images": images,
        "wall_s": time["wall_s"],
        "throughput_ratio": ideal_s / time["wall_s"] if time["wall_s"] else 0.0,
        "calls": by_endpoint,
        "other_calls": other,
        "r2_downloads": stats["r2_downloads"],
        "api_calls": api_calls,
        "api_calls_per_image": per_image(api_calls),
        "all_calls_per_image": per_image(api_calls + stats["r2_downloads"]),
        "http_429": stats["rate_limited"] + stats["too_many_prompts"],
        "rate_limited_429": stats["rate_limited"],
        "too_many_prompts_429": stats["too_many_prompts"],
        "requests_never_retrieved": stats["requests_never_retrieved"],
        "cpu_s_per_1000": time["cpu_s"] * 1000 / images if images else float("nan"),
        "user_s": time["user_s"],
        "sys_s": time["sys_s"],
        "peak_rss_mb": time["peak_rss_mb"],
        "exit_status": time["exit_status"],
    }
    summary = read_json(work / f"{name}.json") if name != "hb" else None
    if summary:
        numbers["script"] = summary
    return numbers


def polling_numbers(folder: Path) -> dict | None:
    """The polling case: one entry per seed, plus medians."""
    meta = read_json(folder / "meta.json")
    if meta is None:
        return None
    runs = []
    for stats_path in sorted(folder.glob("seed-*.stats.json"), key=lambda p: int(p.name.split("-")[1].split(".")[0])):
        seed = int(stats_path.name.split("-")[1].split(".")[0])
        stats = read_json(stats_path)
        time = read_time(folder / f"seed-{seed}.time")
        if stats is None or time is None:
            continue
        images = stats["images_retrieved"]
        # Every endpoint under /api/ counts; R2 downloads and /sim/ do not.
        api = {
            f"{endpoint} {status}": count
            for endpoint, statuses in stats["calls"].items()
            if " /api/" in endpoint
            for status, count in sorted(statuses.items())
        }
        api_calls = sum(api.values())
        checks = sum(count for key, count in api.items() if key.startswith("GET /api/v2/generate/check/"))
        submitted = api.get("POST /api/v2/generate/async 202", 0)
        runs.append(
            {
                "seed": seed,
                "images": images,
                "wall_s": time["wall_s"],
                "throughput_ratio": meta["ideal_s"] / time["wall_s"] if time["wall_s"] else 0.0,
                "api_calls": api_calls,
                "calls": api,
                "checks": checks,
                "requests_submitted": submitted,
                "checks_per_request": checks / submitted if submitted else float("nan"),
                "http_429": stats["rate_limited"] + stats["too_many_prompts"],
                "r2_downloads": stats["r2_downloads"],
                "api_calls_per_image": api_calls / images if images else float("nan"),
                "requests_never_retrieved": stats["requests_never_retrieved"],
                "exit_status": time["exit_status"],
            }
        )
    if not runs:
        return None
    median = {
        key: statistics.median(run[key] for run in runs)
        for key in ("images", "wall_s", "throughput_ratio", "api_calls", "checks", "checks_per_request", "http_429", "api_calls_per_image")
    }
    return {"meta": meta, "runs": runs, "median": median}


def polling_markdown(polling: dict) -> list[str]:
    meta, runs, median = polling["meta"], polling["runs"], polling["median"]
    out = [
        f"Polling case (benches/workload-polling.yaml: 40 images at 512x512, 20 steps, 4 requests of n = 10; "
        f"fresh sim per seed with its default settings: {meta['sim']}; ideal {meta['ideal_s']} s). "
        f"Client: {meta['client_label']}; tree {meta['tree']}. Run {meta['date']}, "
        f"load average at start {meta['load_average_at_start']}.",
        "",
    ]
    endpoints = []
    for run in runs:
        for key in run["calls"]:
            if key not in endpoints:
                endpoints.append(key)
    order = {endpoint: i for i, (endpoint, _) in enumerate(ENDPOINTS)}
    endpoints.sort(key=lambda k: (order.get(k.rsplit(" ", 1)[0], 99), k))
    out.append("| | " + " | ".join(f"seed {run['seed']}" for run in runs) + " | median |")
    out.append("|" + "---|" * (len(runs) + 2))

    def row(label, key, digits):
        cells = [fmt(run.get(key, run["calls"].get(key, 0)), digits) for run in runs]
        med = median.get(key)
        if med is None:
            med = statistics.median(run["calls"].get(key, 0) for run in runs)
        out.append(f"| {label} | " + " | ".join(cells) + f" | {fmt(med, digits)} |")

    row("images retrieved", "images", 0)
    row("Horde API calls per image", "api_calls_per_image", 3)
    row("Horde API calls", "api_calls", 0)
    for key in endpoints:
        label = key.replace("/api/v2/", "").replace("generate/", "")
        row(label, key, 0)
    row("checks per request", "checks_per_request", 2)
    row("429s received", "http_429", 0)
    row("wall time, process start to exit (s)", "wall_s", 1)
    row("throughput ÷ ideal", "throughput_ratio", 3)
    out.append("")
    api = median["api_calls_per_image"]
    out.append(
        f"Target: ≤ 0.45 Horde API calls per image (floor 0.35): median {api:.3f}, "
        + ("met." if api <= 0.45 else "**not met**.")
    )
    return out


def fmt(value, digits=2):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def ratio(a, b, digits=2):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.{digits}f}"


def target(text: str, met: bool | None) -> str:
    """A target with its verdict: `< 1 s: met`, `< 0.5 s: **not met**`."""
    if met is None:
        return text
    return f"{text}: " + ("met" if met else "**not met**")


def current_rows(results: dict) -> list[tuple[str, str, str]]:
    """(figure, value, target) for every figure results.json holds."""
    rows = []
    clients = results.get("clients", {})
    hb = clients.get("hb")
    if hb:
        rows += [
            ("1,000 images: throughput ÷ ideal", f"{hb['throughput_ratio']:.3f}", target("≥ 0.95", hb["throughput_ratio"] >= 0.95)),
            ("1,000 images: Horde API calls per image", f"{hb['api_calls_per_image']:.3f}", "–"),
            ("1,000 images: 429s received", str(hb["http_429"]), target("0", hb["http_429"] == 0)),
            (
                "1,000 images: client CPU s (user + sys), with --no-report",
                f"{hb['cpu_s_per_1000']:.2f} ({hb['user_s']:.2f} + {hb['sys_s']:.2f})",
                target("< 0.5 s", hb["cpu_s_per_1000"] < 0.5),
            ),
            ("1,000 images: client peak RSS", f"{hb['peak_rss_mb']:.1f} MB", target("< 100 MB", hb["peak_rss_mb"] < 100)),
        ]
    default = results.get("default_path")
    if default:
        rows.insert(
            0,
            (
                "1,000 images as a user runs them (page on): client CPU s, peak RSS",
                f"{default['cpu_s']:.2f} ({default['user_s']:.2f} + {default['sys_s']:.2f}), {default['peak_rss_mb']:.0f} MB",
                target("≤ 1.5 s", default["cpu_s"] <= 1.5),
            ),
        )
    page = results.get("report_page")
    if page:
        rows.append(("`report` of those 1,000 images (grids, their images decoded)", f"{page['cpu_s']:.2f} CPU s, {page['wall_s']:.1f} s, {page['peak_rss_mb']:.0f} MB", "–"))
    for name, label in (("sdk", "horde_sdk as its example"), ("sdk-spaced", "horde_sdk spaced 0.7 s")):
        sdk = clients.get(name)
        if sdk:
            rows.append((f"{label}: Horde API calls per image (for comparison)", f"{sdk['api_calls_per_image']:.3f}", "–"))
            rows.append((f"{label}: throughput ÷ ideal (for comparison)", f"{sdk['throughput_ratio']:.3f}", "–"))
    machine = results["machine"]
    firsts = [r["first_submit_s"] for r in results.get("resume", []) if r.get("first_submit_s") is not None]
    if firsts:
        jobs, done = machine.get("resume_jobs", 100000), machine["resume_done"]
        median = statistics.median(firsts)
        rows.append(
            (
                f"resume to first submit, {jobs:,} jobs, {done:,} done (median)",
                f"{median:.3f} s (of {len(firsts)} runs)",
                target("< 1 s", median < 1),
            )
        )
    plan = results.get("plan_1m")
    if plan:
        rows.append(("plan of 1,000,000 jobs", f"{plan['wall_s']:.2f} s, {plan['peak_rss_mb']:.1f} MB", "–"))
    polling = results.get("polling")
    if polling:
        median = polling["median"]
        rows.append(
            (
                "polling case: Horde API calls per image (median of seeds)",
                f"{median['api_calls_per_image']:.3f}",
                target("≤ 0.45", median["api_calls_per_image"] <= 0.45),
            )
        )
        rows.append(("polling case: throughput ÷ ideal (median of seeds)", f"{median['throughput_ratio']:.3f}", "–"))
    pool = {run["keys"]: run for run in results.get("key_pool", [])}
    if 1 in pool and pool[1]["images_per_s"]:
        one = pool[1]["images_per_s"]
        for keys in sorted(k for k in pool if k > 1):
            ratio_n = pool[keys]["images_per_s"] / (keys * one)
            rows.append(
                (
                    f"key pool of {keys} keys: throughput ÷ ({keys} × one key)",
                    f"{ratio_n:.2f}",
                    target("≥ 0.9", ratio_n >= 0.9),
                )
            )
    defaults = {run["keys"]: run for run in results.get("key_pool_defaults", [])}
    if 1 in defaults:
        one = defaults[1]
        rows.append(
            (
                "key pool, default settings: one key ÷ its concurrency's ideal (API calls per image)",
                f"{one['of_ideal']:.3f} ({one['api_calls_per_image']:.3f})",
                target("≥ 0.9", one["of_ideal"] >= 0.9),
            )
        )
        if 2 in defaults and one["wall_s"]:
            two = defaults[2]
            ratio = two["wall_s"] / one["wall_s"]
            rows.append(
                (
                    "key pool, default settings: wall of 2 keys ÷ wall of one (TooManyPrompts)",
                    f"{ratio:.3f} ({two['too_many_prompts'] + one['too_many_prompts']})",
                    target("≤ 0.556", ratio <= 0.556),
                )
            )
    return rows


def table_label(line: str) -> str:
    """The figure column of a Markdown table row."""
    return line.strip().strip("|").split("|")[0].strip()


def update_readme(work: Path, readme: Path) -> None:
    results = read_json(work / "results.json")
    if results is None:
        raise SystemExit(f"no {work / 'results.json'}: run report.py {work} first")
    text = readme.read_text()
    if CURRENT_START not in text or CURRENT_END not in text:
        raise SystemExit(f"{readme} lacks the {CURRENT_START} … {CURRENT_END} markers")
    before, rest = text.split(CURRENT_START, 1)
    table, after = rest.split(CURRENT_END, 1)
    machine = results["machine"]
    stamp = f"{machine['date'][:10]}, {machine['commit']}"
    # Rows of earlier runs stay, in their order, unless this run measured them.
    old = [line for line in table.strip().splitlines() if line.startswith("|") and line not in CURRENT_HEADER]
    rows = {table_label(line): line for line in old}
    order = [table_label(line) for line in old]
    for figure, value, goal in current_rows(results):
        if figure not in rows:
            order.append(figure)
        rows[figure] = f"| {figure} | {value} | {goal} | {stamp} |"
    lines = CURRENT_HEADER + [rows[figure] for figure in order]
    readme.write_text(before + CURRENT_START + "\n" + "\n".join(lines) + "\n" + CURRENT_END + after)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--update-readme":
        update_readme(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "--polling":
        folder = Path(sys.argv[2])
        polling = polling_numbers(folder)
        if polling is None:
            print(f"no polling runs in {folder}", file=sys.stderr)
            return 1
        (folder / "results.json").write_text(json.dumps(polling, indent=2) + "\n")
        print("\n".join(polling_markdown(polling)))
        return 0
    work = Path(sys.argv[1])
    machine = read_json(work / "machine.json")
    sim = machine["sim"]
    images = 1000
    ideal_s = images * seconds(sim["latency"]) / sim["workers"]
    results = {"machine": machine, "ideal_s": ideal_s, "clients": {}}
    for name, _ in CLIENTS:
        numbers = client_numbers(work, name, ideal_s)
        if numbers:
            results["clients"][name] = numbers
    plan = read_time(work / "plan-1m.time")
    results["plan_1m"] = plan
    resume_runs = [read_json(p) for p in sorted(work.glob("resume-[0-9].json"))]
    resume_runs = [r for r in resume_runs if r]
    results["resume"] = resume_runs
    polling = polling_numbers(work / "polling")
    if polling:
        results["polling"] = polling
    results["report_page"] = read_time(work / "hb-report.time")
    results["default_path"] = read_time(work / "hb-default.time")
    for name, path in (("key_pool", "key-pool.jsonl"), ("key_pool_defaults", "key-pool-defaults.jsonl")):
        if (work / path).exists():
            lines = (work / path).read_text().splitlines()
            results[name] = [json.loads(line) for line in lines if line.strip()]
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    clients = [(name, label) for name, label in CLIENTS if name in results["clients"]]
    c = results["clients"]
    hb = c.get("hb")
    out = []
    out.append(
        f"Machine: {machine['nproc']} cores ({machine['cpu_model']}), "
        f"{machine['mem_total_kb'] / 1024 / 1024:.1f} GiB, kernel {machine['kernel']}; "
        f"load average at start {machine['load_average_at_start']}"
        + (f", at the end {(work / 'loadavg-end.txt').read_text().strip()}" if (work / "loadavg-end.txt").exists() else "")
        + " (other work on the machine adds noise to CPU and wall times). "
        f"Code: {machine['commit']}; {machine['rustc']}; {machine['python']}, horde_sdk {machine['horde_sdk']}. "
        f"Run {machine['date']}."
    )
    out.append("")
    out.append(
        f"Workload: benches/workload-1k.yaml, 1,000 images (50 requests of n = 20), default settings; "
        f"sim: {sim['workers']} workers, {sim['latency']} per image, seed {sim['seed']}; "
        f"ideal = 1,000 × {sim['latency']} ÷ {sim['workers']} = {ideal_s:.0f} s."
    )
    out.append("")
    header = "| | " + " | ".join(label for _, label in clients)
    others = [name for name, _ in clients if name.startswith("sdk")]
    header += "".join(f" | horde-batch ÷ {name}" for name in others) + " |"
    out.append(header)
    out.append("|" + "---|" * (1 + len(clients) + len(others)))

    def row(label, key, digits=2, per_image=False):
        values = []
        for name, _ in clients:
            value = c[name].get(key) if key in c[name] else c[name]["calls"].get(key, 0)
            if per_image and value is not None:
                value = value / c[name]["images"]
            values.append(value)
        cells = [fmt(v, digits) for v in values]
        ratios = [ratio(values[0], v) for (name, _), v in zip(clients, values) if name in others] if hb else []
        out.append(f"| {label} | " + " | ".join(cells) + "".join(f" | {r}" for r in ratios) + " |")

    row("images retrieved", "images", 0)
    row("wall time, process start to exit (s)", "wall_s", 1)
    row("throughput ÷ ideal", "throughput_ratio", 3)
    endpoint_keys = []
    for name, _ in clients:
        for key in c[name]["calls"]:
            if key not in endpoint_keys:
                endpoint_keys.append(key)
    order = {label: i for i, (_, label) in enumerate(ENDPOINTS)}
    endpoint_keys.sort(key=lambda k: (order.get(k.split()[0], 99), k))
    for key in endpoint_keys:
        row(f"{key} per image", key, 3, per_image=True)
    row("R2 downloads per image", "r2_downloads", 3, per_image=True)
    row("Horde API calls per image", "api_calls_per_image", 3)
    row("API calls + R2 downloads per image", "all_calls_per_image", 3)
    row("429s received", "http_429", 0)
    row("client CPU s per 1,000 images", "cpu_s_per_1000", 2)
    row("client peak RSS (MB)", "peak_rss_mb", 1)
    out.append("")

    if resume_runs:
        firsts = [r["first_submit_s"] for r in resume_runs if r.get("first_submit_s") is not None]
        starts = [r["run_started_s"] for r in resume_runs if r.get("run_started_s") is not None]
        out.append(
            f"Resume ({'benches/resume-1m.yaml' if machine.get('resume_jobs', 100000) == 1000000 else 'benches/resume-100k.yaml'}: {machine.get('resume_jobs', 100000):,} one-image jobs, first {machine['resume_done']:,} done): "
            f"time from process start to the first submit, {len(firsts)} runs: "
            + ", ".join(f"{f:.3f} s" for f in firsts)
            + (f" (median {statistics.median(firsts):.3f} s)" if firsts else "")
            + "; of which to `run started` (ledger, output folder, find_user): "
            + ", ".join(f"{s:.3f} s" for s in starts)
            + "; peak RSS "
            + ", ".join(f"{r['peak_rss_mb']:.0f} MB" for r in resume_runs)
            + "."
        )
        out.append("")
    if plan:
        out.append(
            f"`horde-batch plan benches/plan-1m.yaml --json --max-jobs 1000000`: {plan['wall_s']:.2f} s wall, "
            f"{plan['cpu_s']:.2f} CPU s, peak RSS {plan['peak_rss_mb']:.1f} MB."
        )
        out.append("")

    if hb:
        out.append("| target | measured | met |")
        out.append("|---|---|---|")
        out.append(
            f"| throughput ≥ 0.95 of ideal | {hb['throughput_ratio']:.3f} | {'yes' if hb['throughput_ratio'] >= 0.95 else 'no'} |"
        )
        out.append(f"| zero rate-limit 429s | {hb['http_429']} | {'yes' if hb['http_429'] == 0 else 'no'} |")
        for name in others:
            sdk = c[name]
            for key, what in (("api_calls_per_image", "Horde API calls"), ("all_calls_per_image", "API calls + R2 downloads")):
                r = hb[key] / sdk[key] if sdk[key] else float("nan")
                out.append(
                    f"| requests per image ≤ 1/3 of {name} ({what}) | {hb[key]:.3f} vs {sdk[key]:.3f} = {r:.2f} | {'yes' if r <= 1 / 3 else 'no'} |"
                )
        out.append(
            f"| < 1 CPU s per 1,000 images | {hb['cpu_s_per_1000']:.2f} s | {'yes' if hb['cpu_s_per_1000'] < 1 else 'no'} |"
        )
        out.append(f"| < 100 MB peak RSS | {hb['peak_rss_mb']:.1f} MB | {'yes' if hb['peak_rss_mb'] < 100 else 'no'} |")
        if resume_runs and firsts:
            worst = max(firsts)
            out.append(
                f"| resume to first submit < 1 s ({machine.get('resume_jobs', 100000):,} jobs, {machine['resume_done']:,} done) | {statistics.median(firsts):.3f} s median, {worst:.3f} s worst | {'yes' if worst < 1 else 'no'} |"
            )
    if polling:
        out.append("")
        out.extend(polling_markdown(polling))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
