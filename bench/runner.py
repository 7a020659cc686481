"""Measured runs of contenders: one run, a cell's interleaved runs and their
medians, and the tuning of a contender's thread or process count. Shared by
the matrix of ``python3 -m bench`` and the probes that run our crawl."""

from __future__ import annotations

import json
import os
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path

from bench import measure
from bench.contenders import REPO, Contender, Inputs

MEDIAN_KEYS = ("wall_s", "cpu_s", "images_per_s", "mb_per_s", "cpu_percent", "peak_rss_mb",
               "event_loop_cpu_ms_per_image", "worker_cpu_ms_per_image")


def run_once(contender: Contender, inputs: Inputs, work: Path, tag: str) -> dict:
    out = work / "out" / f"{contender.key}-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = work / "logs" / f"{contender.key}-{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **contender.env}
    result = measure.run(contender.command(inputs, out), cwd=REPO, env=env, log=log)
    done = contender.count(out, log)
    cpu = cpu_per_image(out)
    shutil.rmtree(out, ignore_errors=True)  # keep the disk and page cache for the next run
    bytes_in = inputs.image_bytes * done / inputs.images if inputs.images else 0
    return {
        **cpu,
        "wall_s": round(result.wall_s, 3),
        "cpu_s": round(result.cpu_s, 3),
        "images": done,
        "images_per_s": round(done / result.wall_s, 2),
        "mb_per_s": round(bytes_in / 1e6 / result.wall_s, 2),
        "cpu_percent": round(result.cpu_percent, 1),
        "peak_rss_mb": round(result.peak_rss_mb, 1),
        "returncode": result.returncode,
    }


def cpu_per_image(out: Path) -> dict[str, float]:
    """Our crawl's CPU per image, from its report: the event loop's (engine,
    parsing, feeds) and the workers' (verify, decode, resize, write)."""
    try:
        stages = json.loads((out / "report.json").read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return {}
    return {f"{name}_cpu_ms_per_image": stages[f"{name}_cpu_s_per_image_ms"]
            for name in ("event_loop", "worker") if f"{name}_cpu_s_per_image_ms" in stages}


def median_of(runs: list[dict]) -> dict:
    summary = {key: round(statistics.median(run[key] for run in runs), 2) for key in MEDIAN_KEYS if key in runs[0]}
    summary["images"] = min(run["images"] for run in runs)
    summary["runs"] = runs
    return summary


def interleaved(contenders: list[Contender], inputs: Inputs, work: Path, runs: int, tag: str) -> dict[str, dict]:
    """Every contender ``runs`` times, in turn (so that a slow spell of the
    machine is shared), and each one's medians with its label."""
    done: dict[str, list[dict]] = {contender.key: [] for contender in contenders}
    for index in range(runs):
        for contender in contenders:
            run = run_once(contender, inputs, work, f"{tag}-run{index}")
            done[contender.key].append(run)
            print(f"{tag} run {index + 1}/{runs} {contender.key}: {run}", flush=True)
    return {contender.key: {"label": contender.label, **median_of(done[contender.key])} for contender in contenders}


def tune(
    candidates: list[int], make: Callable[[int], Contender], inputs: Inputs, work: Path, name: str
) -> tuple[int, dict[int, float]]:
    """One run per candidate value; the fastest wins."""
    speeds = {}
    for value in candidates:
        speeds[value] = run_once(make(value), inputs, work, f"tune{value}")["images_per_s"]
        print(f"  tune {name}={value}: {speeds[value]} images/s", flush=True)
    return max(speeds, key=speeds.get), speeds
