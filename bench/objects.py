"""The object store probe: the corpus crawled (ShrinkToFit 224, originals
kept, every core) into a local folder and into a local S3 server (moto's, on
the same machine), alternately; images/s of each and the S3 requests per
image, counted in the server's request log."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench import corpus as corpus_module
from bench import servers
from bench.contenders import REPO, SHRINK_224
from bench.servers import LOCAL_HOSTS_ALLOWED
from openimages_crawler.testing.objects import S3Server, start_s3_server

RUNS = 2
# One werkzeug line per request: "... "PUT /bucket/key HTTP/1.1" 200 -".
_REQUEST = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/[\d.]+"')


def _requests(log: Path) -> Counter[str]:
    """Requests the S3 server logged, by method (a listing is a GET of the bucket with a query)."""
    found: Counter[str] = Counter()
    for match in _REQUEST.finditer(log.read_text(errors="replace")):
        method, path = match.groups()
        found["LIST" if method == "GET" and "list-type=2" in path else method] += 1
    return found


def _crawl(metadata: Path, store: str, work: Path, log: Path, s3: S3Server) -> float:
    settings = [*SHRINK_224, "OPENIMAGES_SAVE_ORIGINALS=True", f"IMAGES_STORE={store}",
                f"AWS_ENDPOINT_URL={s3.endpoint}", f"AWS_ACCESS_KEY_ID={s3.access_key}",
                f"AWS_SECRET_ACCESS_KEY={s3.secret_key}", "AWS_REGION_NAME=us-east-1",
                f"OPENIMAGES_WORK_DIR={work}"]
    command = [sys.executable, "-m", "scrapy", "crawl", "openimages", "-a", f"metadata={metadata}",
               *[arg for setting in settings for arg in ("-s", setting)], *LOCAL_HOSTS_ALLOWED]
    started = time.perf_counter()
    with open(log, "w") as out:
        subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=1800)
    return time.perf_counter() - started


def probe(corpus: corpus_module.Corpus, work: Path, args: argparse.Namespace) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    s3 = start_s3_server(work / "s3")
    s3.make_bucket("bench")
    times: dict[str, list[float]] = {"disk": [], "s3": []}
    requests: Counter[str] = Counter()
    try:
        with servers.start(corpus.files, work / "server") as server:
            metadata = corpus.metadata_for(server.base_url("http"), work / "images.csv")
            for run in range(RUNS):
                times["disk"].append(_crawl(metadata, str(work / f"disk{run}"), work / f"work-disk{run}",
                                            work / f"disk{run}.log", s3))
                shutil.rmtree(work / f"disk{run}", ignore_errors=True)
                before = _requests(s3.log)
                times["s3"].append(_crawl(metadata, f"s3://bench/run{run}", work / f"work-s3-{run}",
                                          work / f"s3-{run}.log", s3))
                requests = _requests(s3.log) - before
    finally:
        s3.stop()
    images = len(corpus.manifest)
    best = {name: min(values) for name, values in times.items()}
    result = {
        "images": images,
        "disk_images_per_s": round(images / best["disk"], 1),
        "s3_images_per_s": round(images / best["s3"], 1),
        "s3_requests_per_image": round(sum(requests.values()) / images, 2),
        "s3_requests": dict(requests),
    }
    kinds = ", ".join(f"{count:,} {method}" for method, count in requests.most_common())
    result["summary"] = (
        f"{images:,} images (ShrinkToFit 224, originals kept, every core) into a local folder: "
        f"{result['disk_images_per_s']} images/s; into moto's S3 server on the same machine: "
        f"{result['s3_images_per_s']} images/s (best of {RUNS} each, alternating); "
        f"{result['s3_requests_per_image']} S3 requests per image ({kinds}).")
    return result
