"""Probe: selection by class over a V6-sized bounding-box file.

Generates (once, cached) a 14.6M-row, 21-column ``oidv6-train-annotations-bbox.csv``
(~1.7M images, 600 classes with a long-tailed frequency, like the real file),
its class descriptions, a small image-labels file and a 2,000-row image list,
lays them out as a V6 metadata cache, then times the real crawl
(``-a version=6 -a subset=train -a classes=... -a download_metadata=false``):
once selecting only, once also writing the selected images' annotations.
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import psutil

from bench.contenders import REPO
from bench.measure import tree_rss
from bench.servers import LOCAL_HOSTS_ALLOWED
from openimages_crawler.dataset.catalogue import (
    IMAGE_INFO_COLUMNS,
    VERSIONS,
    sources_for,
)

BBOX_COLUMNS = (
    "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,"
    "IsDepiction,IsInside,XClick1X,XClick2X,XClick3X,XClick4X,XClick1Y,XClick2Y,XClick3Y,XClick4Y"
)
CLASSES = 600
IMAGE_ROWS = 200  # few: every selected row is a (fast-failing) request
WANTED = ("Class 001", "Class 250")  # a frequent class (~7% of boxes) and a rare one
REFUSED_URL = "http://127.0.0.1:9/{}.jpg"  # nothing listens: rows fail fast, no real downloads


def _label(index: int) -> str:
    return f"/m/0{index:05x}"


def _image_id(index: int) -> str:
    return f"{index * 2654435761 % (1 << 64):016x}"


def generate(folder: Path, rows: int, seed: int = 7) -> dict[str, Path]:
    """The V6 metadata files (catalogue paths) under ``folder``; each made once."""
    version = VERSIONS[6]
    paths = {
        "boxes": folder / version.annotations.of_kind("boxes")["train"][0].local_path,
        "labels": folder / version.annotations.of_kind("labels")["train"][0].local_path,
        "classes": folder / version.annotations.class_names.local_path,
        # what a crawl selecting by boxes reads (the boxable image file on V4+)
        "images": folder / sources_for(6, "train", boxed_only=True)[0].local_path,
    }
    rng = random.Random(seed)
    labels = [_label(i) for i in range(CLASSES)]
    writers = {"boxes": _write_boxes, "labels": _write_labels, "classes": _write_classes,
               "images": _write_images}
    for name, path in paths.items():
        if not path.exists():
            print(f"writing {path.name} (once)", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(path.name + ".part")
            with open(part, "w", newline="") as out:
                writers[name](out, rng, labels, rows)
            part.rename(path)
    return paths


def _write_boxes(out: IO[str], rng: random.Random, labels: list[str], rows: int) -> None:
    """``rows`` boxes, 1-16 an image, classes long-tailed (weight 1/rank)."""
    weights = [1.0 / (i + 1) for i in range(len(labels))]
    coords = [f"{rng.random():.6f}" for _ in range(4096)]
    out.write(BBOX_COLUMNS + "\n")
    written = image = 0
    while written < rows:
        image += 1
        image_id = _image_id(image)
        count = min(rng.randint(1, 16), rows - written)
        lines = []
        for label in rng.choices(labels, weights, k=count):
            c = rng.sample(coords, 12)
            lines.append(
                f"{image_id},xclick,{label},1,{c[0]},{c[1]},{c[2]},{c[3]},0,1,0,0,0,"
                f"{c[4]},{c[5]},{c[6]},{c[7]},{c[8]},{c[9]},{c[10]},{c[11]}\n"
            )
        out.write("".join(lines))
        written += count


def _write_classes(out: IO[str], rng: random.Random, labels: list[str], rows: int) -> None:
    out.writelines(f"{label},Class {i:03d}\n" for i, label in enumerate(labels))


def _write_labels(out: IO[str], rng: random.Random, labels: list[str], rows: int) -> None:
    out.write("ImageID,Source,LabelName,Confidence\n")
    for index in range(1, IMAGE_ROWS + 1):
        out.writelines(f"{_image_id(index)},verification,{label},1\n" for label in rng.sample(labels, 5))


def _write_images(out: IO[str], rng: random.Random, labels: list[str], rows: int) -> None:
    """The first IMAGE_ROWS images of the box file, with URLs where nothing listens."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(IMAGE_INFO_COLUMNS)
    for index in range(1, IMAGE_ROWS + 1):
        row = dict.fromkeys(IMAGE_INFO_COLUMNS, "")
        row.update(ImageID=_image_id(index), Subset="train", OriginalURL=REFUSED_URL.format(index),
                   OriginalSize="1000", OriginalMD5="AAAAAAAAAAAAAAAAAAAAAA==", Rotation="0")
        writer.writerow(row.values())


def store_with_cache(work: Path, data: Path, pattern: str = "*.csv") -> Path:
    """A fresh store whose metadata cache links to the generated files (those ``pattern`` names)."""
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    for source in data.rglob(pattern):
        if not source.is_file() or source.name.endswith(".tmp"):
            continue
        target = store / "metadata" / source.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    return store


# Log lines whose first appearance is timed (seconds after the process started).
MARKS = {
    "selected_s": "images carry",
    "writing_s": "Writing the annotations",
    "written_s": "annotations-labels.csv:",
}


def _timed_crawl(store: Path, log: Path, annotations: bool) -> dict:
    argv = [
        sys.executable, "-m", "scrapy", "crawl", "openimages", "-a", "version=6", "-a", "subset=train",
        "-a", f"classes={','.join(WANTED)}", "-a", "download_metadata=false",
        "-a", f"annotations={str(annotations).lower()}", "-s", f"IMAGES_STORE={store}",
        "-s", "RETRY_TIMES=0", "-s", "LOG_LEVEL=INFO", *LOCAL_HOSTS_ALLOWED,
    ]
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    proc = psutil.Process(process.pid)
    peak = 0
    seen: dict[str, float] = {}
    while process.poll() is None:
        try:
            peak = max(peak, tree_rss(proc))
        except psutil.Error:
            pass
        text = log.read_text()
        for key, mark in MARKS.items():
            if key not in seen and mark in text:
                seen[key] = round(time.perf_counter() - started, 1)
        time.sleep(0.2)
    wall = time.perf_counter() - started
    text = log.read_text()
    selected = re.search(r"(\d+) train images carry", text)
    result = {
        "returncode": process.returncode,
        "wall_s": round(wall, 1),
        **seen,
        "peak_rss_mb": round(peak / 2**20),
        "images_selected": int(selected.group(1)) if selected else None,
        "annotation_rows_written": sum(int(n) for n in re.findall(r"Wrote \S+: (\d+) rows", text)),
    }
    if "writing_s" in seen and "written_s" in seen:
        result["annotations_s"] = round(seen["written_s"] - seen["writing_s"], 1)
    return result


def probe(work: Path, cache: Path, args: argparse.Namespace) -> dict:
    data = generate(cache / f"classes-{args.bbox_rows}", args.bbox_rows)
    work.mkdir(parents=True, exist_ok=True)
    size_gb = data["boxes"].stat().st_size / 1e9
    select = _timed_crawl(store_with_cache(work, cache / f"classes-{args.bbox_rows}"), work / "select.log", False)
    write = _timed_crawl(store_with_cache(work, cache / f"classes-{args.bbox_rows}"), work / "write.log", True)
    for run, log in ((select, "select.log"), (write, "write.log")):
        if run["returncode"] != 0:
            raise SystemExit(f"the classes probe's crawl failed: see {work / log}")
    result = {"rows": args.bbox_rows, "file_gb": round(size_gb, 2), "classes": list(WANTED),
              "select": select, "select_and_write": write}
    result["summary"] = (
        f"classes={','.join(WANTED)} over a {args.bbox_rows:,}-row bbox file ({size_gb:.2f} GB, "
        f"generated): the crawl's selection was ready {select.get('selected_s')} s after the "
        f"process started ({select['images_selected']:,} images), peak RSS "
        f"{select['peak_rss_mb']} MB (whole crawl {select['wall_s']} s); with the annotations "
        f"written: writing took {write.get('annotations_s')} s ({write['annotation_rows_written']:,} "
        f"rows of the {IMAGE_ROWS} listed images), peak RSS {write['peak_rss_mb']} MB, whole crawl "
        f"{write['wall_s']} s."
    )
    return result


def index_probe(work: Path, cache: Path, args: argparse.Namespace) -> dict:
    """The annotation index that pack samples read their labels and boxes from:
    build time, size and lookups per second over the V6-sized box file."""
    import resource  # noqa: PLC0415 (this probe only)

    from openimages_crawler.dataset.annotation_index import (  # noqa: PLC0415
        INDEX_SUFFIX,
        AnnotationIndex,
        SampleAnnotations,
    )
    from openimages_crawler.dataset.annotations import ClassNames  # noqa: PLC0415

    data = generate(cache / f"classes-{args.bbox_rows}", args.bbox_rows)
    work.mkdir(parents=True, exist_ok=True)
    source = work / data["boxes"].name
    shutil.copy(data["boxes"], source)  # the index goes next to its file: keep the cache clean
    source.with_name(source.name + INDEX_SUFFIX).unlink(missing_ok=True)
    started = time.perf_counter()
    index = AnnotationIndex.of(source)
    build_s = time.perf_counter() - started
    size_gb = index.path.stat().st_size / 1e9
    lookup = SampleAnnotations({"boxes": {"train": index}}, ClassNames.load(data["classes"]))
    rng = random.Random(3)
    image_ids = [_image_id(rng.randrange(args.bbox_rows // 8)) for _ in range(20_000)]
    started = time.perf_counter()
    boxes = sum(len(lookup.of("train", image_id)["boxes"]) for image_id in image_ids)
    lookups_per_s = len(image_ids) / (time.perf_counter() - started)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    source.unlink()
    index.path.unlink()
    result = {"rows": args.bbox_rows, "csv_gb": round(data["boxes"].stat().st_size / 1e9, 2),
              "build_s": round(build_s, 1), "index_gb": round(size_gb, 2),
              "lookups_per_s": round(lookups_per_s), "boxes_found": boxes, "peak_rss_mb": round(peak_mb)}
    result["summary"] = (
        f"annotation index of a {args.bbox_rows:,}-row bbox file ({result['csv_gb']} GB, generated): built in "
        f"{result['build_s']} s, {result['index_gb']} GB on disk, peak RSS {result['peak_rss_mb']} MB; "
        f"{result['lookups_per_s']:,} image lookups/s (labels and boxes of one image, one thread)."
    )
    return result
