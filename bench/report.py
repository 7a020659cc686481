"""The Markdown of a benchmark run (the JSON holds every run): a table per
(corpus, protocol) cell, the issue's ratios across the cells, the latency
probe and the other probes' summaries."""

from __future__ import annotations

# (ours, reference, target): the targets, one row each in the ratio table.
TARGET_RATIOS = (
    ("ours_shrink", "baseline", 1.1),
    ("ours_shrink", "limit_fast", 0.75),
    ("ours_shrink", "i2d_largest", 1.5),
    ("ours_shrink", "ours_shrink_1core", 1.8),  # scaling: all cores / one core
)
CPU_COLUMNS = ("event_loop_cpu_ms_per_image", "worker_cpu_ms_per_image")
LATENCY_TARGET = 0.9


def cells(results: dict) -> list[tuple[str, str]]:
    return [(shape, protocol) for shape, row in results.get("matrix", {}).items() for protocol in row]


def cell_rows(results: dict, shape: str, protocol: str) -> dict[str, dict]:
    """A cell's contenders, then its corpus's no-network ones (run once for every protocol)."""
    offline = results.get("offline", {}).get(shape, {}).get("contenders", {})
    return {**results["matrix"][shape][protocol]["contenders"], **offline}


def ratio(rows: dict[str, dict], ours: str, reference: str) -> float | None:
    if ours not in rows or reference not in rows or not rows[reference]["images_per_s"]:
        return None
    return round(rows[ours]["images_per_s"] / rows[reference]["images_per_s"], 2)


def header(results: dict) -> list[str]:
    machine = results["machine"]
    lines = [
        (f"Run {machine['date']} on {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB; Python {machine['python']}, Scrapy {machine['scrapy']}, "
        f"Pillow {machine['pillow']}, img2dataset {machine['img2dataset']}. Server: "
        f"{results.get('server', '?')} on 127.0.0.1–16 (HTTPS: TLS 1.3, a self-signed certificate "
        f"that no client checks). Median of {results['runs_per_contender']} runs; wall time includes start-up. "
        f"img2dataset thread_count={results.get('img2dataset_threads')}, baseline "
        f"Pool({results.get('baseline_processes')}) "
        f"({'tuned on the first cell' if results.get('tuned', True) else 'given with --no-tune'})."),
        "",
    ]
    for shape, corpus in results["corpora"].items():
        lines.append(
            f"Corpus `{shape}`: {corpus['files']} files, {corpus['total_mb']} MB (median "
            f"{corpus['size_median_kb']} KB, mean {corpus['size_mean_kb']} KB, {corpus['size_min_kb']}–"
            f"{corpus['size_max_kb']} KB; longest side median {corpus['longest_side_median']} px, "
            f"{corpus['pngs']} PNGs)."
        )
    if results.get("rows"):
        lines.append(f"Each cell crawls {results['rows']:,} rows, cycling through the corpus's files under fresh "
                     "ids (the files come back from the server's page cache, as in any run).")
    return lines


def cell_table(results: dict, shape: str, protocol: str) -> list[str]:
    files = results["corpora"][shape]["files"]
    rows = results.get("rows") or files
    lines = [
        "",
        f"**{shape}, {protocol.upper()}**",
        "",
        "| contender | images/s | MB/s | CPU % | peak RSS MB (whole tree) | images ok | "
        + "CPU ms/image: event loop, workers |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    offline = results.get("offline", {}).get(shape, {}).get("contenders", {})
    for key, row in cell_rows(results, shape, protocol).items():
        cpu = ", ".join(str(row[name]) for name in CPU_COLUMNS if name in row) or "—"
        note = " (no network: one run for every protocol)" if key in offline else ""
        lines.append(
            f"| {row['label']} (`{key}`){note} | {row['images_per_s']} | {row['mb_per_s']} | "
            f"{row['cpu_percent']} | {row['peak_rss_mb']} | {row['images']}/{files if key in offline else rows} | {cpu} |"
        )
    return lines


def ratio_table(results: dict) -> list[str]:
    columns = cells(results)
    lines = [
        "",
        "| ratio (images/s) | target | " + " | ".join(f"{shape} {protocol.upper()}" for shape, protocol in columns)
        + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for ours, reference, target in TARGET_RATIOS:
        values = []
        for shape, protocol in columns:
            value = ratio(cell_rows(results, shape, protocol), ours, reference)
            values.append("—" if value is None else f"{value}{' ✓' if value >= target else ' ✗'}")
        lines.append(f"| `{ours}` / `{reference}` | ≥ {target} | " + " | ".join(values) + " |")
    return lines


def markdown(results: dict) -> str:
    lines: list[str] = []
    if results.get("matrix"):
        lines += header(results)
        for shape, protocol in cells(results):
            lines += cell_table(results, shape, protocol)
        lines += ratio_table(results)
    latency = results.get("latency")
    if latency:
        mark = " ✓" if latency["ratio"] >= LATENCY_TARGET else " ✗"
        lines += ["", (f"**Latency**: `ours_shrink` with {latency['latency_ms']} ms per request / no latency "
                       f"(Python server, originals, HTTP): {latency['ratio']}{mark} (target ≥ {LATENCY_TARGET}).")]
    for name, probe in results.get("probes", {}).items():
        lines += ["", f"**Probe `{name}`**: {probe['summary']}"]
    return "\n".join(lines).lstrip("\n") + "\n"
