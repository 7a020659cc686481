"""Probes: a 9.2M-row metadata CSV (time to the first request, RSS over the
first minutes), a rerun over a finished 100k-image store (rows skipped per
second, downloads made), the fast path's output quality, selection by
class over a 14.6M-row bounding-box file (bench/classes.py), the
annotation kinds beyond boxes over full-size V7 train files (bench/kinds.py), the merge of
9M results rows from processes' parts, a fleet of two local Scrapyd
nodes (bench/fleet.py), a crawl into a local S3 server against local
disk (bench/objects.py), a process's status record after 300,000 hosts,
and the CPU per image of Scrapy's download handlers and of our event loop
(bench/handler_probes.py). All use the originals corpus over HTTP but the
handler and loop probes, which follow --protocols (and --corpus, the
handler probe)."""

from __future__ import annotations

import argparse
import csv
import io
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
from PIL import Image

from bench import classes, fleet, handler_probes, kinds, objects, quality, servers
from bench import corpus as corpus_module
from bench.contenders import REPO
from bench.servers import LOCAL_HOSTS_ALLOWED
from openimages_crawler import settings as project_settings
from openimages_crawler.checkpoint.ledger import settle
from openimages_crawler.dataset.catalogue import IMAGES_CSV_COLUMNS
from openimages_crawler.monitor.progress import Counts
from openimages_crawler.monitor.report import HostTally
from openimages_crawler.monitor.status import HostRanking, PartStatus, set_counts
from openimages_crawler.store.layout import StoreLayout, part_path
from openimages_crawler.store.local import LocalStore

PROBE_PORT = 47_123  # fixed, so the generated CSVs stay valid between runs
STATUS_HOSTS = 300_000  # distinct hosts met by the status probe's crawl


def run(name: str, corpora: dict[str, corpus_module.Corpus], work: Path, args: argparse.Namespace) -> dict:
    """Probe ``name``; ``corpora`` has the originals and the shapes of --corpus."""
    corpus = corpora["originals"]
    if name == "handlers":
        return handler_probes.probe(corpora, work / "probe-handlers", args)
    if name == "loop":
        return handler_probes.loop_probe(corpus, work / "probe-loop", args)
    if name == "quality":
        return quality.compare(corpus)
    if name == "classes":
        return classes.probe(work / "probe-classes", corpus.root.parent, args)
    if name == "kinds":
        return kinds.probe(work / "probe-kinds", corpus.root.parent, args)
    if name == "index":
        return classes.index_probe(work / "probe-index", corpus.root.parent, args)
    if name == "database":
        return database_probe(corpus, work / "probe-database", args)
    if name == "fleet":
        return fleet.probe(corpus, work / "probe-fleet", args)
    if name == "s3":
        return objects.probe(corpus, work / "probe-s3", args)
    probe = {"csv": csv_probe, "rerun": rerun_probe, "merge": merge_probe, "status": status_probe}[name]
    return probe(corpus, work / f"probe-{name}", args)


def _metadata(corpus: corpus_module.Corpus, rows: int) -> Path:
    path = corpus.root.parent / f"probe-metadata-{corpus.shape}-{rows}-{PROBE_PORT}.csv"
    if not path.exists():
        print(f"writing a {rows}-row metadata CSV (once)", flush=True)
        corpus.metadata_for(corpus_module.base_url("http", PROBE_PORT), path.with_suffix(".tmp"), rows=rows)
        path.with_suffix(".tmp").rename(path)
    return path


def _crawl(metadata: Path, store: Path, log: Path, *settings: str) -> subprocess.Popen:
    argv = [
        sys.executable, "-m", "scrapy", "crawl", "openimages", "-a", f"metadata={metadata}",
        "-s", f"IMAGES_STORE={store}", *LOCAL_HOSTS_ALLOWED,
    ]
    for setting in settings:
        argv += ["-s", setting]
    return subprocess.Popen(argv, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def csv_probe(corpus: corpus_module.Corpus, work: Path, args: argparse.Namespace) -> dict:
    metadata = _metadata(corpus, args.probe_rows)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with servers.start(corpus.files, work / "server", port=PROBE_PORT) as server:
        started_wall = time.time()
        process = _crawl(metadata, work / "store", work / "crawl.log")
        proc = psutil.Process(process.pid)
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + args.probe_seconds
        while time.monotonic() < deadline and process.poll() is None:
            try:
                samples.append((round(time.time() - started_wall, 1), proc.memory_info().rss / 2**20))
            except psutil.Error:
                break
            time.sleep(1)
        process.kill()
        process.wait()
        requests = server.requests()
    first = min((t for t, _, _ in requests), default=None)
    first_request_s = round(first - started_wall, 2) if first is not None else None
    rss = [round(value, 1) for _, value in samples]
    early = rss[len(rss) // 4] if rss else 0.0
    result = {
        "rows": args.probe_rows,
        "metadata_gb": round(metadata.stat().st_size / 1e9, 2),
        "first_request_s": first_request_s,
        "requests_served": len(requests),
        "seconds": args.probe_seconds,
        "rss_mb_samples": rss,
        "peak_rss_mb": max(rss, default=0.0),
        "rss_growth_last_three_quarters_mb": round(rss[-1] - early, 1) if rss else 0.0,
    }
    result["summary"] = (
        f"{args.probe_rows:,}-row images.csv ({result['metadata_gb']} GB): first request "
        f"{first_request_s} s after the process started; RSS peak {result['peak_rss_mb']} MB "
        f"over {args.probe_seconds} s (growth over the last three quarters "
        f"{result['rss_growth_last_three_quarters_mb']} MB); {len(requests)} images fetched."
    )
    return result


def _finished_store(corpus: corpus_module.Corpus, metadata: Path, rows: int) -> Path:
    """A store in which every row is recorded as a success with its resized file."""
    store = corpus.root.parent / f"probe-store-{rows}"
    if (store / "ready").exists():
        return store
    print(f"building a finished {rows}-image store (once)", flush=True)
    shutil.rmtree(store, ignore_errors=True)
    layout = StoreLayout()
    thumbnail = io.BytesIO()
    Image.new("RGB", (224, 168), (120, 130, 140)).save(thumbnail, "JPEG")
    body = thumbnail.getvalue()
    success = store / "train" / "images-success.csv"
    success.parent.mkdir(parents=True)
    made: set[Path] = set()
    with open(metadata, newline="") as source, open(success, "w", newline="") as out:
        reader = csv.DictReader(source)
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(IMAGES_CSV_COLUMNS)
        for row in reader:
            path = store / layout.image_key("train", "images-resized", row["ImageID"], "jpg")
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            path.write_bytes(body)
            writer.writerow([row[name] for name in IMAGES_CSV_COLUMNS])
    (store / "ready").write_text("")
    return store


def rerun_probe(corpus: corpus_module.Corpus, work: Path, args: argparse.Namespace) -> dict:
    metadata = _metadata(corpus, args.store_rows)
    store = _finished_store(corpus, metadata, args.store_rows)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with servers.start(corpus.files, work / "server", port=PROBE_PORT) as server:
        started = time.perf_counter()
        process = _crawl(metadata, store, work / "crawl.log")
        process.wait()
        wall = time.perf_counter() - started
        downloads = len(server.requests())
    log = (work / "crawl.log").read_text()
    elapsed = re.search(r"'elapsed_time_seconds': ([0-9.]+)", log)
    spider_s = float(elapsed.group(1)) if elapsed else wall
    result = {
        "rows": args.store_rows,
        "wall_s": round(wall, 2),
        "spider_s": round(spider_s, 2),
        "rows_per_s": round(args.store_rows / spider_s),
        "rows_per_s_with_startup": round(args.store_rows / wall),
        "downloads": downloads,
        "returncode": process.returncode,
    }
    result["summary"] = (
        f"rerun over a finished {args.store_rows:,}-image store: {result['rows_per_s']:,} rows/s "
        f"skipped from spider open to close ({result['rows_per_s_with_startup']:,} rows/s "
        f"including start-up, {result['wall_s']} s), {downloads} downloads."
    )
    return result


def merge_probe(corpus: corpus_module.Corpus, work: Path, args: argparse.Namespace) -> dict:
    """The end of a big run: ``args.merge_rows`` success rows in 8 processes'
    parts merged into ``images-success.csv`` (the failure parts likewise, 3%),
    then the failure files reconciled, as a supervisor or a fleet does."""
    shutil.rmtree(work, ignore_errors=True)
    store = work / "store"
    final = store / "train" / "images-success.csv"
    failure = store / "train" / "images-failure.csv"
    header = ",".join(IMAGES_CSV_COLUMNS)
    parts = 8
    written = 0
    for kind, path, rows in (("success", final, args.merge_rows), ("failure", failure, args.merge_rows * 3 // 100)):
        columns = header + (",FailureReason,FailureDetails" if kind == "failure" else "")
        handles = []
        for index in range(1, parts + 1):
            part = part_path(path, f"{index}of{parts}")
            part.parent.mkdir(parents=True, exist_ok=True)
            handles.append(open(part, "w", newline=""))  # noqa: SIM115 - closed below
            handles[-1].write(columns + "\r\n")
        tail = ",http_error,HTTP 404" if kind == "failure" else ""
        for row in range(rows):
            image_id = f"{row + (0 if kind == 'success' else args.merge_rows):016x}"
            handles[row % parts].write(
                f"{image_id},train,https://farm3.staticflickr.com/2/{image_id}_o.jpg,"
                f"https://www.flickr.com/photos/x/{row}/,https://creativecommons.org/licenses/by/2.0/,"
                f"https://www.flickr.com/people/x/,Author {row},\"Title, {row}\",{100000 + row},"
                f"AAAAAAAAAAAAAAAAAAAAAA==,{tail}\r\n")
        for handle in handles:
            handle.close()
        written += rows
    files = {"success": [str(store / "*" / "images-success.csv")],
             "failure": [str(store / "*" / "images-failure.csv")]}
    started = time.perf_counter()
    settle(files, LocalStore(str(store)), 1, 1, reconcile_failures=True)
    seconds = time.perf_counter() - started
    size = final.stat().st_size + failure.stat().st_size
    shutil.rmtree(work, ignore_errors=True)
    result = {"rows": written, "parts": parts * 2, "seconds": round(seconds, 1), "mb": round(size / 1e6),
              "rows_per_s": round(written / seconds)}
    result["summary"] = (
        f"merging {written:,} result rows ({result['mb']:,} MB) from {parts} processes' parts and "
        f"reconciling the failure file took {result['seconds']} s ({result['rows_per_s']:,} rows/s).")
    return result


def database_probe(corpus: corpus_module.Corpus, work: Path, args: argparse.Namespace) -> dict:
    """The store's database over a V6-sized store's metadata: 9.2M results rows
    (the generated metadata as a success file), the 14.6M-row box file and its
    class descriptions; built from zero, then updated after 10,000 more rows."""
    import resource  # noqa: PLC0415 (this probe only)

    from openimages_crawler.outputs.database import (  # noqa: PLC0415
        MainOutput,
        ResultsFile,
        update_database,
    )

    metadata = _metadata(corpus, args.probe_rows)
    annotations = classes.generate(corpus.root.parent / f"classes-{args.bbox_rows}", args.bbox_rows)
    shutil.rmtree(work, ignore_errors=True)
    train = work / "store" / "train"
    train.mkdir(parents=True)
    success = train / "images-success.csv"
    shutil.copyfile(metadata, success)  # appended to below: not the cached file
    for name, source in (("annotations-bbox.csv", annotations["boxes"]),
                         ("annotations-labels.csv", annotations["labels"]),
                         ("class-descriptions.csv", annotations["classes"])):
        (train / name).symlink_to(source)
    store = LocalStore(str(work / "store"))
    database = work / "store" / "openimages.duckdb"
    results = [ResultsFile(success, "train", "stored")]
    started = time.perf_counter()
    first = update_database(database, store, StoreLayout(), results, MainOutput("images-resized", "jpg"))
    build_s = time.perf_counter() - started
    size_gb = database.stat().st_size / 1e9
    with open(metadata, "rb") as source, open(success, "ab") as out:
        source.readline()
        out.writelines(source.readline() for _ in range(10_000))  # rows a rerun appends (ids repeat: one row each)
    started = time.perf_counter()
    again = update_database(database, store, StoreLayout(), results, MainOutput("images-resized", "jpg"))
    update_s = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"rows": first.images, "boxes_file_gb": round(annotations["boxes"].stat().st_size / 1e9, 2),
              "results_gb": round(metadata.stat().st_size / 1e9, 2), "build_s": round(build_s, 1),
              "database_gb": round(size_gb, 2), "update_rows_read": again.rows_added,
              "update_s": round(update_s, 1), "peak_rss_mb": round(peak_mb)}
    result["summary"] = (
        f"database of a store's metadata: {first.images:,} results rows ({result['results_gb']} GB CSV) and a "
        f"{args.bbox_rows:,}-row box file ({result['boxes_file_gb']} GB): built from zero in {result['build_s']} s, "
        f"{result['database_gb']} GB on disk, peak RSS {result['peak_rss_mb']} MB; after 10,000 more results rows, "
        f"updated in {result['update_s']} s (reading {again.rows_added:,} rows)."
    )
    shutil.rmtree(work, ignore_errors=True)
    return result


def status_probe(corpus: corpus_module.Corpus, work: Path, args: argparse.Namespace) -> dict:
    """A crawl process that met 300,000 distinct hosts (two results each, a
    seventh of them failing): the event loop's time for one status tick (the
    record's hosts taken, the record encoded, and written to a local store;
    an object store's write is the record thread's) and the record's size,
    with every host's tally in the record (as before OPENIMAGES_STATUS_HOSTS)
    and with the leaders and the others summed; and the time per result of
    keeping the leaders, against a plain tally per host."""
    shutil.rmtree(work, ignore_errors=True)
    results = [(f"farm{n}.staticflickr.com", "http_error" if n % 7 == 0 and again else None)
               for n in range(STATUS_HOSTS) for again in (False, True)]
    plain: dict[str, HostTally] = {}
    started = time.perf_counter()
    for host, failure in results:  # what a process kept per result before
        tally = plain.setdefault(host, HostTally())
        if failure is None:
            tally.ok += 1
        else:
            tally.failures[failure] += 1
    plain_us = (time.perf_counter() - started) / len(results) * 1e6
    hosts = HostRanking(project_settings.OPENIMAGES_STATUS_HOSTS)
    started = time.perf_counter()
    for host, failure in results:
        hosts.add(host, failure)
    ranking_us = (time.perf_counter() - started) / len(results) * 1e6
    store = LocalStore(str(work / "store"))
    store.open()
    record = PartStatus(part="1of1")
    counts = Counts(60.0, done=len(results), ok=hosts.total.ok, failed=hosts.total.failed,
                    failures=dict(hosts.total.failures))

    def tick(source: HostRanking | dict[str, HostTally]) -> tuple[float, float, int]:
        """Milliseconds on the loop for a bucket (record made and encoded) and
        for a folder (made and written), and the record's bytes."""
        started = time.perf_counter()
        set_counts(record, counts, source)
        size = len(record.encode())
        encoded = time.perf_counter() - started
        started = time.perf_counter()
        set_counts(record, counts, source)
        record.write(store)
        return encoded * 1000, (time.perf_counter() - started) * 1000, size

    every = tick(plain)
    bounded = [tick(hosts) for _ in range(21)]
    store.close()
    shutil.rmtree(work, ignore_errors=True)
    result = {
        "hosts": STATUS_HOSTS, "results": len(results), "status_hosts": hosts.limit,
        "every_host_bucket_ms": round(every[0], 1), "every_host_folder_ms": round(every[1], 1),
        "every_host_record_mb": round(every[2] / 1e6, 1),
        "bounded_bucket_ms": round(statistics.median(t[0] for t in bounded), 2),
        "bounded_folder_ms": round(statistics.median(t[1] for t in bounded), 2),
        "bounded_folder_max_ms": round(max(t[1] for t in bounded), 2),
        "bounded_record_kb": round(bounded[0][2] / 1e3, 1),
        "plain_tally_us_per_result": round(plain_us, 2), "ranking_us_per_result": round(ranking_us, 2),
    }
    result["summary"] = (
        f"status record of a process that met {STATUS_HOSTS:,} hosts ({len(results):,} results): with every "
        f"host it was {result['every_host_record_mb']} MB and one tick held the event loop "
        f"{result['every_host_folder_ms']:,} ms (folder; {result['every_host_bucket_ms']:,} ms to encode for a "
        f"bucket); with the {hosts.limit} leading hosts and the others summed it is "
        f"{result['bounded_record_kb']} KB and a tick takes {result['bounded_folder_ms']} ms (median of 21, max "
        f"{result['bounded_folder_max_ms']} ms; {result['bounded_bucket_ms']} ms for a bucket). Keeping the "
        f"leaders costs {result['ranking_us_per_result']} µs per result (a plain tally: "
        f"{result['plain_tally_us_per_result']} µs)."
    )
    return result
