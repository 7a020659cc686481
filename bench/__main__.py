"""``python3 -m bench``: the side-by-side speed benchmark (see README "Speed").

Builds (once) a Flickr-like corpus, serves it from nginx on 127.0.0.1–16,
runs every contender several times in an interleaved order, and writes
``bench/results/latest.json`` and ``latest.md`` with the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import corpus as corpus_module
from bench import measure, probes, report, servers
from bench.contenders import (
    IMG2DATASET_VERSION,
    REPO,
    Contender,
    Inputs,
    all_contenders,
    baseline,
    img2dataset,
    ours_shrink,
)

CACHE = REPO / "bench" / ".cache"
RESULTS = REPO / "bench" / "results"


def img2dataset_python(cache: Path) -> Path:
    """A venv of its own for img2dataset (its pins must not touch ours)."""
    venv = cache / f"venv-img2dataset-{IMG2DATASET_VERSION}"
    python = venv / "bin" / "python"
    if not (venv / "ready").exists():
        print(f"installing img2dataset {IMG2DATASET_VERSION} into {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"img2dataset=={IMG2DATASET_VERSION}"],
            check=True,
        )
        (venv / "ready").write_text("")
    return python


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
    keys = ("wall_s", "images_per_s", "mb_per_s", "cpu_percent", "peak_rss_mb",
            "event_loop_cpu_ms_per_image", "worker_cpu_ms_per_image")
    summary = {key: round(statistics.median(run[key] for run in runs), 2) for key in keys if key in runs[0]}
    summary["images"] = min(run["images"] for run in runs)
    summary["runs"] = runs
    return summary


def tune(
    candidates: list[int], make: Callable[[int], Contender], inputs: Inputs, work: Path, name: str
) -> tuple[int, dict[int, float]]:
    """One run per candidate value; the fastest wins."""
    speeds = {}
    for value in candidates:
        speeds[value] = run_once(make(value), inputs, work, f"tune{value}")["images_per_s"]
        print(f"  tune {name}={value}: {speeds[value]} images/s", flush=True)
    return max(speeds, key=speeds.get), speeds


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )
    memory = next(
        (int(line.split()[1]) // 1024 // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
         if line.startswith("MemTotal")),
        0,
    )
    import PIL
    import scrapy

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "python": platform.python_version(),
        "scrapy": scrapy.__version__,
        "pillow": PIL.__version__,
        "img2dataset": IMG2DATASET_VERSION,
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__)
    parser.add_argument("--images", type=int, default=2000, help="corpus size (default 2000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per contender; the median is reported")
    parser.add_argument("--latency-ms", type=int, default=200, help="latency probe (0 = skip)")
    parser.add_argument("--only", default="", help="comma-separated contender keys to run")
    parser.add_argument("--no-img2dataset", action="store_true")
    parser.add_argument("--no-tune", action="store_true", help="use the default thread/process counts")
    parser.add_argument("--img2dataset-threads", type=int, default=32)
    parser.add_argument("--baseline-processes", type=int, default=16)
    parser.add_argument("--probes", default="csv,rerun,quality,classes,merge,fleet,s3", help="probes to run ('' = none)")
    parser.add_argument("--probe-rows", type=int, default=9_200_000)
    parser.add_argument("--probe-seconds", type=int, default=120)
    parser.add_argument("--store-rows", type=int, default=100_000)
    parser.add_argument("--merge-rows", type=int, default=9_000_000, help="merge probe's result rows")
    parser.add_argument("--bbox-rows", type=int, default=14_600_000, help="classes probe file size")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--update", action="store_true", help="keep the other sections of an earlier latest.json"
    )
    args = parser.parse_args()

    CACHE.mkdir(parents=True, exist_ok=True)
    corpus = corpus_module.build(CACHE, args.images)
    work = CACHE / "work"
    shutil.rmtree(work / "out", ignore_errors=True)
    python_i2d = None if args.no_img2dataset else img2dataset_python(CACHE)
    earlier = args.out / "latest.json"
    results: dict = json.loads(earlier.read_text()) if args.update and earlier.exists() else {}
    results.update(machine=machine(), corpus=corpus_module.describe(corpus))
    results.setdefault("contenders", {})
    with servers.start(corpus.files, work / "nginx") as server:
        results["server"] = server.kind
        inputs = Inputs(
            metadata=corpus.metadata_for(server.port, work / "images.csv"),
            url_list=corpus.url_list_for(server.port, work / "urls.csv"),
            files=corpus.files,
            images=args.images,
            image_bytes=corpus.total_bytes(),
            img2dataset_python=python_i2d,
        )
        i2d_threads, pool_size = args.img2dataset_threads, args.baseline_processes
        if not args.no_tune:
            print("tuning thread and process counts (one run each)", flush=True)
            if python_i2d is not None:
                i2d_threads, speeds = tune(
                    [8, 16, 32, 64],
                    lambda n: img2dataset("i2d_largest", "", "keep_ratio_largest", n),
                    inputs, work, "img2dataset thread_count",
                )
                results["img2dataset_thread_tuning"] = speeds
            pool_size, speeds = tune([4, 8, 16, 32], baseline, inputs, work, "baseline Pool")
            results["baseline_pool_tuning"] = speeds
        contenders = all_contenders(i2d_threads, pool_size, python_i2d is not None)
        if args.only:
            wanted = set(args.only.split(","))
            contenders = [c for c in contenders if c.key in wanted]
        if contenders:
            results.update(
                tuned=not args.no_tune,
                img2dataset_threads=i2d_threads,
                baseline_processes=pool_size,
                runs_per_contender=args.runs,
            )
        runs: dict[str, list[dict]] = {c.key: [] for c in contenders}
        for index in range(args.runs):
            for contender in contenders:
                run = run_once(contender, inputs, work, f"run{index}")
                runs[contender.key].append(run)
                print(f"run {index + 1}/{args.runs} {contender.key}: {run}", flush=True)
        for contender in contenders:
            results["contenders"][contender.key] = {"label": contender.label, **median_of(runs[contender.key])}

    if args.latency_ms:
        results["latency"] = latency_probe(corpus, work, args)
    for probe in filter(None, args.probes.split(",")):
        results.setdefault("probes", {})[probe] = probes.run(probe, corpus, work, args)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.markdown(results)
    (args.out / "latest.md").write_text(markdown)
    print(markdown)


def latency_probe(corpus: corpus_module.Corpus, work: Path, args: argparse.Namespace) -> dict:
    """Ours (1) on the Python server with no latency and with ``--latency-ms``."""
    probe: dict = {"latency_ms": args.latency_ms}
    for latency in (0, args.latency_ms):
        with servers.start(corpus.files, work / f"py-{latency}", latency_ms=latency, prefer="python") as server:
            inputs = Inputs(
                metadata=corpus.metadata_for(server.port, work / f"images-{latency}.csv"),
                url_list=corpus.url_list_for(server.port, work / f"urls-{latency}.csv"),
                files=corpus.files,
                images=args.images,
                image_bytes=corpus.total_bytes(),
                img2dataset_python=None,
            )
            runs = [run_once(ours_shrink(), inputs, work, f"lat{latency}-{i}") for i in range(args.runs)]
            probe[f"{latency}ms"] = median_of(runs)
            print(f"latency {latency} ms: {probe[f'{latency}ms']['images_per_s']} images/s", flush=True)
    zero = probe["0ms"]["images_per_s"]
    probe["ratio"] = round(probe[f"{args.latency_ms}ms"]["images_per_s"] / zero, 3) if zero else 0.0
    return probe


if __name__ == "__main__":
    main()
