"""The fleet probe: one crawl as 2 shard jobs on 2 local Scrapyd daemons
(``scrapy fleet``, the egg deployed with scrapyd-deploy) against the same
crawl in one process, on the corpus; what scheduling, watching and merging
add to the jobs' own time."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from bench import corpus as corpus_module
from bench import servers
from bench.contenders import REPO, SHRINK_224
from bench.servers import LOCAL_HOSTS_ALLOWED
from openimages_crawler.testing.scrapyd import (
    build_egg,
    clean_env,
    deploy,
    project_copy,
    start_daemon,
)

SHARDS = 2


def _settings(store: Path) -> list[str]:
    pairs = [f"IMAGES_STORE={store}", "OPENIMAGES_PROCESSES=1", *SHRINK_224]
    return [arg for pair in pairs for arg in ("-s", pair)] + list(LOCAL_HOSTS_ALLOWED)


def _run(command: list[str], cwd: Path, log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as out:
        subprocess.run(command, cwd=cwd, env=clean_env(), stdout=out, stderr=subprocess.STDOUT, check=True,
                       timeout=1800)
    return time.perf_counter() - started


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def probe(corpus: corpus_module.Corpus, work: Path, args: argparse.Namespace) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    copy = project_copy(REPO, work / "project")
    egg = build_egg(copy, work / "openimages_crawler.egg")
    daemons = [start_daemon(work / name, name, max_proc=1) for name in ("node1", "node2")]
    try:
        deadline = time.monotonic() + 30
        while not all(daemon.answers() for daemon in daemons):
            if time.monotonic() > deadline:
                raise RuntimeError("the Scrapyd daemons did not start")
            time.sleep(0.2)
        deploy(copy, daemons, egg)
        with servers.start(corpus.files, work / "server") as server:
            metadata = corpus.metadata_for(server.base_url("http"), work / "images.csv")
            one = _run([sys.executable, "-m", "scrapy", "crawl", "openimages", "-a", f"metadata={metadata}",
                        *_settings(work / "one")], copy, work / "one.log")
            store = work / "fleet"
            began = time.time()
            fleet = _run([sys.executable, "-m", "scrapy", "fleet", "openimages", "-a", f"metadata={metadata}",
                          "--targets", "node1,node2", "--shards", str(SHARDS), *_settings(store)], copy,
                         work / "fleet.log")
            ended = time.time()
    finally:
        for daemon in daemons:
            daemon.kill()
    records = [json.loads((store / ".status" / f"{k}of{SHARDS}.json").read_text()) for k in range(1, SHARDS + 1)]
    first_start = min(_epoch(record["started"]) for record in records)
    last_update = max(_epoch(record["updated"]) for record in records)
    images = len(corpus.manifest)
    result = {
        "images": images,
        "one_process_s": round(one, 1),
        "fleet_s": round(fleet, 1),
        "one_process_images_per_s": round(images / one, 1),
        "fleet_images_per_s": round(images / fleet, 1),
        "to_first_job_s": round(first_start - began, 1),
        "after_last_job_s": round(ended - last_update, 1),
    }
    result["summary"] = (
        f"{images:,} images as {SHARDS} shard jobs on 2 local Scrapyd daemons (one process each): "
        f"{result['fleet_images_per_s']} images/s ({result['fleet_s']} s) against "
        f"{result['one_process_images_per_s']} images/s ({result['one_process_s']} s) for one process; "
        f"{result['to_first_job_s']} s from the command to the first job's start (checks, scheduling, "
        f"Scrapyd's poll and job start-up), {result['after_last_job_s']} s from the last job's last record to "
        "the end (the watch's poll, the merge of the parts, the report).")
    return result
