"""``python3 -m bench``: the side-by-side speed benchmark (see README "Speed").

Builds (once) the two corpus shapes (Open Images originals, and their CVDF
copies at most 1024 px), serves each from nginx on 127.0.0.1–16 over HTTP and
HTTPS, runs the contenders of every (corpus, protocol) cell several times in
an interleaved order, and writes ``bench/results/latest.json`` and
``latest.md`` with the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import corpus as corpus_module
from bench import probes, report, servers
from bench.contenders import (
    IMG2DATASET_VERSION,
    TARGETS,
    Contender,
    Inputs,
    all_contenders,
    baseline,
    img2dataset,
    inputs_for,
    ours_shrink,
)
from bench.corpus import CACHE, SHAPES, Corpus
from bench.runner import interleaved, median_of, run_once, tune

RESULTS = Path(__file__).resolve().parent / "results"
PROTOCOLS = ("http", "https")


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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__)
    parser.add_argument("--images", type=int, default=2000, help="corpus size (default 2000)")
    parser.add_argument("--rows", type=int, default=0,
                        help="metadata rows per cell, cycling through the corpus's files with fresh ids "
                             "(default: one per file); start-up weighs less in longer runs")
    parser.add_argument("--corpus", default=",".join(SHAPES), help="corpus shapes (default: originals,cvdf)")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="default: http,https")
    parser.add_argument("--runs", type=int, default=3, help="runs per contender; the median is reported")
    parser.add_argument("--latency-ms", type=int, default=200, help="latency probe (0 = skip)")
    parser.add_argument("--only", default="", help="comma-separated contender keys to run (default: "
                        f"{','.join(TARGETS)}; 'none' = probes only)")
    parser.add_argument("--no-img2dataset", action="store_true")
    parser.add_argument("--no-tune", action="store_true", help="use the default thread/process counts")
    parser.add_argument("--img2dataset-threads", type=int, default=32)
    parser.add_argument("--baseline-processes", type=int, default=16)
    parser.add_argument("--probes", default="csv,rerun,quality,classes,merge,fleet,s3",
                        help="probes to run ('' = none; also: handlers, loop, index, kinds, database, status)")
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
    for name, given, allowed in (("--corpus", args.corpus, SHAPES), ("--protocols", args.protocols, PROTOCOLS)):
        if not given or not set(given.split(",")) <= set(allowed):
            parser.error(f"{name} takes a comma-separated list of {', '.join(allowed)}")
    return args


def main() -> None:
    args = parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    shapes, protocols = args.corpus.split(","), args.protocols.split(",")
    # The probes use the originals: built whatever --corpus says (a cvdf corpus is made from them).
    corpora = {shape: corpus_module.build(CACHE, args.images, shape) for shape in dict.fromkeys(("originals", *shapes))}
    work = CACHE / "work"
    shutil.rmtree(work / "out", ignore_errors=True)
    keys = chosen_keys(args)
    python_i2d = img2dataset_python(CACHE) if any(key.startswith("i2d_") for key in keys) else None
    earlier = args.out / "latest.json"
    results: dict = json.loads(earlier.read_text()) if args.update and earlier.exists() else {}
    for legacy in ("contenders", "corpus"):  # one table of an earlier, single-cell format
        results.pop(legacy, None)
    results["machine"] = machine()
    if keys:
        results.setdefault("corpora", {}).update({shape: corpus_module.describe(corpora[shape]) for shape in shapes})
        run_matrix(results, [corpora[shape] for shape in shapes], protocols, keys, python_i2d, work, args)
    if args.latency_ms:
        results["latency"] = latency_probe(corpora["originals"], work, args)
    for probe in filter(None, args.probes.split(",")):
        results.setdefault("probes", {})[probe] = probes.run(probe, corpora, work, args)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.markdown(results)
    (args.out / "latest.md").write_text(markdown)
    print(markdown)


def chosen_keys(args: argparse.Namespace) -> list[str]:
    """The contenders of every cell: --only's, or the targets (no img2dataset with --no-img2dataset)."""
    known = [contender.key for contender in all_contenders(1, 1, not args.no_img2dataset)]
    wanted = set(args.only.split(",")) if args.only else set(TARGETS)
    return [key for key in known if key in wanted]


def tuned_contenders(keys: list[str], inputs: Inputs, work: Path, results: dict, args: argparse.Namespace,
                     python_i2d: Path | None) -> list[Contender]:
    """The chosen contenders with img2dataset's thread count and the baseline's
    pool size tuned (once, on the first cell) when they run."""
    i2d_threads, pool_size = args.img2dataset_threads, args.baseline_processes
    if not args.no_tune:
        print("tuning thread and process counts (one run each)", flush=True)
        if python_i2d is not None:
            i2d_threads, results["img2dataset_thread_tuning"] = tune(
                [8, 16, 32, 64], lambda n: img2dataset("i2d_largest", "", "keep_ratio_largest", n),
                inputs, work, "img2dataset thread_count",
            )
        if "baseline" in keys:
            pool_size, results["baseline_pool_tuning"] = tune([4, 8, 16, 32], baseline, inputs, work, "baseline Pool")
    results.update(tuned=not args.no_tune, img2dataset_threads=i2d_threads, baseline_processes=pool_size,
                   runs_per_contender=args.runs, rows=args.rows)
    return [c for c in all_contenders(i2d_threads, pool_size, python_i2d is not None) if c.key in keys]


def run_matrix(results: dict, corpora: list[Corpus], protocols: list[str], keys: list[str],
               python_i2d: Path | None, work: Path, args: argparse.Namespace) -> None:
    """Each (corpus, protocol) cell: the network contenders' medians into
    ``results["matrix"]``; those with no network once per corpus, with the
    first protocol, into ``results["offline"]``."""
    contenders: list[Contender] = []
    for corpus in corpora:
        with servers.start(corpus.files, work / "nginx") as server:
            results["server"] = server.kind
            for protocol in protocols:
                inputs = inputs_for(corpus, server, protocol, work, python_i2d, args.rows or None)
                contenders = contenders or tuned_contenders(keys, inputs, work, results, args, python_i2d)
                cell = [c for c in contenders if c.needs_network or protocol == protocols[0]]
                medians = interleaved(cell, inputs, work, args.runs, f"{corpus.shape}-{protocol}")
                for contender in cell:
                    if contender.needs_network:
                        place = results.setdefault("matrix", {}).setdefault(corpus.shape, {}).setdefault(protocol, {})
                    else:
                        place = results.setdefault("offline", {}).setdefault(corpus.shape, {})
                    place.setdefault("contenders", {})[contender.key] = medians[contender.key]


def latency_probe(corpus: Corpus, work: Path, args: argparse.Namespace) -> dict:
    """Ours (1) on the Python server (HTTP) with no latency and with ``--latency-ms``."""
    probe: dict = {"latency_ms": args.latency_ms}
    for latency in (0, args.latency_ms):
        with servers.start(corpus.files, work / f"py-{latency}", latency_ms=latency, prefer="python") as server:
            inputs = inputs_for(corpus, server, "http", work / f"py-{latency}", None)
            runs = [run_once(ours_shrink(), inputs, work, f"lat{latency}-{i}") for i in range(args.runs)]
            probe[f"{latency}ms"] = median_of(runs)
            print(f"latency {latency} ms: {probe[f'{latency}ms']['images_per_s']} images/s", flush=True)
    zero = probe["0ms"]["images_per_s"]
    probe["ratio"] = round(probe[f"{args.latency_ms}ms"]["images_per_s"] / zero, 3) if zero else 0.0
    return probe


if __name__ == "__main__":
    main()
