"""The download handler probes.

``handlers``: a bare Scrapy process (bench/bare.py) downloads every file of
a corpus with each handler of bench/handlers.py, on asyncio's loop and on
uvloop, over each protocol and corpus shape; its CPU per image (median of
--runs runs, interleaved) is the handler's and the engine's cost, which the
crawler's choice of OPENIMAGES_DOWNLOAD_HANDLER rests on. Also written to
``handlers.md`` and ``handlers.json`` in --out.

``loop``: our crawl (ShrinkToFit 224, one process) with the default handler
and with Twisted's, beside the bare process over the same URLs: what the
crawl's event loop spends besides the handler and engine ("everything else",
target at most 1 ms per image; both counted from the spider's opening), and
its workers' CPU per image against the Pillow limit's process tree's (target
at most 1.1 times).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench import servers
from bench.contenders import REPO, SHRINK_224, Contender, inputs_for, limit, ours
from bench.corpus import Corpus
from bench.handlers import CONFIGURATIONS, HANDLERS
from bench.runner import median_of, run_once
from openimages_crawler import settings as project_settings

LOOP_HANDLERS = ("aiohttp", "twisted")  # OPENIMAGES_DOWNLOAD_HANDLER: the default and the fallback
ELSE_TARGET_MS = 1.0
WORKER_TARGET = 1.1
BARE_TIMEOUT_S = 900


def bare(urls: Path, handler: str, loop: str, log: Path, read_size: int = 0) -> dict:
    """One bare process's figures, with an ``error`` when it failed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bench.bare", str(urls), "--handler", handler, "--loop", loop,
               "--read-size", str(read_size)]
    try:
        with open(log, "w") as stderr:
            done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                  timeout=BARE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"no end after {BARE_TIMEOUT_S} s"}
    problem = next((line for line in reversed(log.read_text().splitlines()) if line.strip()), "")[-200:]
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": problem or f"exit status {done.returncode}"}
    if not result["images"]:
        return {**result, "error": f"no image downloaded: {result['first_failure'] or problem}"}
    return result


def median_bare(runs: list[dict]) -> dict:
    """The medians of the runs that worked (the last error when none did)."""
    good = [run for run in runs if "error" not in run]
    if not good:
        return {"error": runs[-1]["error"], "runs": runs}
    return {
        "cpu_ms_per_image": round(statistics.median(run["cpu_ms_per_image"] for run in good), 2),
        "loop_cpu_ms_per_image": round(statistics.median(run["loop_cpu_ms_per_image"] for run in good), 2),
        "wall_s": round(statistics.median(run["wall_s"] for run in good), 2),
        "images": min(run["images"] for run in good),
        "failed_runs": len(runs) - len(good),
        "runs": runs,
    }


def _cell(urls: Path, work: Path, runs: int, tag: str) -> dict[str, dict]:
    """Every configuration over one URL list, ``runs`` times in turn."""
    done: dict[tuple[str, str], list[dict]] = {configuration: [] for configuration in CONFIGURATIONS}
    for index in range(runs):
        for handler, loop in CONFIGURATIONS:
            run = bare(urls, handler, loop, work / "logs" / f"{tag}-{handler}-{loop}-{index}.log")
            done[handler, loop].append(run)
            print(f"handlers {tag} run {index + 1}/{runs} {handler}/{loop}: {run}", flush=True)
    return {f"{handler}/{loop}": median_bare(found) for (handler, loop), found in done.items()}


def probe(corpora: dict[str, Corpus], work: Path, args: argparse.Namespace) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    cells: dict[str, dict[str, dict]] = {}
    for shape in args.corpus.split(","):
        corpus = corpora[shape]
        with servers.start(corpus.files, work / f"server-{shape}") as server:
            for protocol in args.protocols.split(","):
                urls = corpus.url_list_for(server.base_url(protocol), work / f"urls-{shape}-{protocol}.csv")
                cells.setdefault(shape, {})[protocol] = _cell(urls, work, args.runs, f"{shape}-{protocol}")
    result = {"images": {shape: len(corpora[shape].manifest) for shape in cells}, "runs": args.runs,
              "cells": cells}
    result["summary"] = (
        "a bare Scrapy process (CONCURRENT_REQUESTS 128, 16 per host) downloading every file and dropping "
        f"it, its CPU per image from spider open to close (ms, median of {args.runs}; asyncio's loop, uvloop "
        "in parentheses): " + "; ".join(
            f"{shape} {protocol}: " + ", ".join(
                f"{handler} {_ms(row[f'{handler}/asyncio'])} ({_ms(row[f'{handler}/uvloop'])})"
                for handler in HANDLERS)
            for shape, protocols in cells.items() for protocol, row in protocols.items())
        + " (handlers.md)."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "handlers.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "handlers.md").write_text(table(cells, args.runs) + "\n" + result["summary"] + "\n")
    return result


def _ms(figures: dict) -> str:
    return "failed" if "error" in figures else str(figures["cpu_ms_per_image"])


def table(cells: dict[str, dict[str, dict]], runs: int) -> str:
    """Handler × loop rows; a column per corpus shape and protocol: CPU ms per image (images ok)."""
    columns = [(shape, protocol) for shape, protocols in cells.items() for protocol in protocols]
    lines = [
        f"Bare Scrapy process, CPU ms per image from spider open to close (median of {runs} runs), "
        + "images ok in parentheses.",
        "",
        "| handler | loop | " + " | ".join(f"{shape} {protocol.upper()}" for shape, protocol in columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for handler, loop in CONFIGURATIONS:
        values = []
        for shape, protocol in columns:
            figures = cells[shape][protocol][f"{handler}/{loop}"]
            values.append(f"failed: {figures['error']}" if "error" in figures
                          else f"{figures['cpu_ms_per_image']} ({figures['images']})")
        lines.append(f"| {handler} | {loop} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def _crawl(handler: str) -> Contender:
    return ours(f"ours_1proc_{handler}", f"ours: ShrinkToFit 224, one process, {handler} handler", *SHRINK_224,
                "OPENIMAGES_PROCESSES=1", f"OPENIMAGES_DOWNLOAD_HANDLER={handler}")


def loop_probe(corpus: Corpus, work: Path, args: argparse.Namespace) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    protocols = args.protocols.split(",")
    crawls: dict[str, list[dict]] = {}
    bares: dict[str, list[dict]] = {}
    limits = []
    with servers.start(corpus.files, work / "server") as server:
        inputs = {protocol: inputs_for(corpus, server, protocol, work, None) for protocol in protocols}
        for index in range(args.runs):
            for handler in LOOP_HANDLERS:
                for protocol in protocols:
                    key = f"{handler}/{protocol}"
                    crawl = run_once(_crawl(handler), inputs[protocol], work, f"{protocol}-{index}")
                    crawls.setdefault(key, []).append(crawl)
                    log = work / "logs" / f"bare-{handler}-{protocol}-{index}.log"
                    bares.setdefault(key, []).append(bare(inputs[protocol].url_list, handler, "asyncio", log,
                                                          project_settings.OPENIMAGES_SOCKET_READ_SIZE))
            limits.append(run_once(limit("fast"), inputs[protocols[0]], work, f"{index}"))
    limit_ms = statistics.median([1000 * run["cpu_s"] / run["images"] for run in limits if run["images"]] or [0.0])
    rows = {key: _loop_row(median_of(crawls[key]), median_bare(bares[key]), limit_ms) for key in crawls}
    result = {"images": len(corpus.manifest), "runs": args.runs, "limit_cpu_ms_per_image": round(limit_ms, 2),
              "rows": rows}
    result["summary"] = (
        f"our crawl (ShrinkToFit 224, one process, originals, median of {args.runs}): event-loop CPU per image "
        f"minus the bare Scrapy process's (handler + engine) = everything else, target ≤ {ELSE_TARGET_MS} ms: "
        + ", ".join(f"{key} {row['loop_ms']} − {row['bare_ms']} = {row['else_ms']}{_mark(row['else_ok'])}"
                    for key, row in rows.items())
        + f"; workers' CPU per image against the Pillow limit's ({result['limit_cpu_ms_per_image']} ms), target "
        f"≤ {WORKER_TARGET}×: "
        + ", ".join(f"{key} {row['worker_ms']} ms ({row['worker_ratio']}×{_mark(row['worker_ok'])})"
                    for key, row in rows.items())
        + "."
    )
    return result


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def _loop_row(crawl: dict, bare_figures: dict, limit_ms: float) -> dict:
    """The loop probe's figures for one handler and protocol (None where a run failed)."""
    loop_ms = crawl.get("event_loop_cpu_ms_per_image")
    bare_ms = bare_figures.get("loop_cpu_ms_per_image")  # the loop's thread, as the crawl's figure
    worker_ms = crawl.get("worker_cpu_ms_per_image")
    else_ms = round(loop_ms - bare_ms, 2) if loop_ms is not None and bare_ms is not None else None
    ratio = round(worker_ms / limit_ms, 2) if worker_ms is not None and limit_ms else None
    return {
        "images": crawl["images"], "images_per_s": crawl["images_per_s"],
        "loop_ms": loop_ms, "bare_ms": bare_ms,
        "else_ms": else_ms, "else_ok": None if else_ms is None else else_ms <= ELSE_TARGET_MS,
        "worker_ms": worker_ms, "worker_ratio": ratio, "worker_ok": None if ratio is None else ratio <= WORKER_TARGET,
        "crawl": crawl, "bare": bare_figures,
    }
