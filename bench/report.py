"""The Markdown table of a benchmark run (the JSON holds every run)."""

from __future__ import annotations

# (ours, reference) pairs whose ratio the targets name, with the target.
RATIOS = (
    ("ours_shrink", "ours_shrink_1core", 1.8),  # scaling: all cores / one core
    ("i2d_largest", "i2d_largest_1core", None),  # img2dataset's scaling
    ("ours_shrink", "i2d_largest", 2.0),
    ("ours_fillcrop", "i2d_center_crop", 2.0),
    ("ours_shrink", "baseline", 1.1),
    ("ours_shrink", "limit_fast", 0.75),
    ("ours_shrink", "limit_plain", 0.65),
    ("ours_originals", "i2d_no", 1.0),
    ("ours_originals", "limit_fast", None),
    ("ours_two_outputs", "ours_shrink", None),  # what a second, larger output costs
)


def ratio(results: dict, ours: str, reference: str) -> float | None:
    contenders = results["contenders"]
    if ours not in contenders or reference not in contenders:
        return None
    base = contenders[reference]["images_per_s"]
    return round(contenders[ours]["images_per_s"] / base, 2) if base else None


def markdown(results: dict) -> str:
    machine = results["machine"]
    corpus = results["corpus"]
    if not results["contenders"]:  # probes only
        return "\n\n".join(f"**Probe `{name}`**: {probe['summary']}"
                            for name, probe in results.get("probes", {}).items()) + "\n"
    lines = [
        f"Run {machine['date']} on {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB; Python {machine['python']}, Scrapy {machine['scrapy']}, "
        f"Pillow {machine['pillow']}, img2dataset {machine['img2dataset']}. Server: "
        f"{results.get('server', '?')} on 127.0.0.1–16. Corpus: {corpus['files']} files, "
        f"{corpus['total_mb']} MB (median {corpus['size_median_kb']} KB, "
        f"{corpus['size_min_kb']}–{corpus['size_max_kb']} KB; longest side median "
        f"{corpus['longest_side_median']} px, {corpus['pngs']} PNGs). Median of "
        f"{results['runs_per_contender']} runs; wall time includes start-up. img2dataset "
        f"thread_count={results.get('img2dataset_threads')}, baseline "
        f"Pool({results.get('baseline_processes')}) "
        f"({'both tuned in the same run' if results.get('tuned', True) else 'given with --no-tune'}).",
        "",
        "| contender | images/s | MB/s | CPU % | peak RSS MB (whole tree) | images ok | CPU ms/image: "
        "event loop, workers |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in results["contenders"].items():
        cpu = ", ".join(str(row[name]) for name in ("event_loop_cpu_ms_per_image", "worker_cpu_ms_per_image")
                        if name in row) or "—"
        lines.append(
            f"| {row['label']} (`{key}`) | {row['images_per_s']} | {row['mb_per_s']} | "
            f"{row['cpu_percent']} | {row['peak_rss_mb']} | {row['images']}/{corpus['files']} | {cpu} |"
        )
    lines += ["", "| ratio (images/s) | measured | target |", "|---|---:|---:|"]
    for ours, reference, target in RATIOS:
        value = ratio(results, ours, reference)
        if value is not None:
            mark = "" if target is None else (" ✓" if value >= target else " ✗")
            lines.append(f"| `{ours}` / `{reference}` | {value}{mark} | {target or '—'} |")
    latency = results.get("latency")
    if latency:
        ms = latency["latency_ms"]
        lines.append(
            f"| `ours_shrink` with {ms} ms per request / no latency (Python server) | "
            f"{latency['ratio']}{' ✓' if latency['ratio'] >= 0.9 else ' ✗'} | 0.9 |"
        )
    for name, probe in results.get("probes", {}).items():
        lines += ["", f"**Probe `{name}`**: {probe['summary']}"]
    return "\n".join(lines) + "\n"
