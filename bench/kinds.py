"""Probe: the annotation kinds beyond boxes over full-size V7 train files.

Generates (once, cached) the train files a crawl with ``-a annotations=KIND``
streams, at the official sizes: V5's instance masks (2,686,666 rows), V6's
visual relationships (3,174,311 rows), V7's point labels (62,000,000 rows,
~4 GB) and the localized narratives (507,444 lines of ~5 KB in ten parts),
with image ids drawn from a pool of 1,743,042 train images and labels from
600 MIDs with a long-tailed frequency (``bench/classes.py``'s WANTED: a
frequent class and a rare one). Lays them out as a V7 metadata cache at the
catalogue's paths, with a 200-row image list whose URLs point where nothing
listens (so the crawl itself is tiny), and times the real crawl once per
kind: ``-a version=7 -a subset=train -a classes=... -a annotations=KIND
-a download_metadata=false`` for masks, points and relationships (the
selection scan, then the selected images' rows written), and ``-a ids=FILE
-a annotations=narratives`` (the listed images) for the narratives.

The mask zips are valid empty zips (a real train zip is gigabytes, and with
``download_metadata=false`` a missing one fails the mask file's write): the
probe measures the CSV work, and the crawl logs the masks as not in their zips.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import psutil

from bench.classes import CLASSES, IMAGE_ROWS, REFUSED_URL, WANTED, _label, store_with_cache
from bench.contenders import REPO
from bench.servers import LOCAL_HOSTS_ALLOWED
from openimages_crawler.dataset.catalogue import (
    IMAGE_INFO_COLUMNS,
    VERSIONS,
    sources_for,
)

# The official train sizes (storage.googleapis.com/openimages; the Open Images
# download page and the localized-narratives site): V5 train-annotations-object-
# segmentation.csv 2,686,666 masks; V6 oidv6-train-annotations-vrd.csv 3,174,311
# relationships; V7 point labels 66.4M over all splits, most of them train (we
# take 62M); localized narratives train 507,444 in 10 parts; 1,743,042 boxable
# train images.
POOL_IMAGES = 1_743_042
MASK_ROWS = 2_686_666
RELATIONSHIP_ROWS = 3_174_311
POINT_ROWS = 62_000_000
NARRATIVE_LINES = 507_444
NARRATIVE_IMAGES = 504_413  # a few images have two narratives
KINDS = ("masks", "points", "relationships", "narratives")
SEED = 11
CHUNK_LINES = 1 << 20  # lines joined per write

MASK_COLUMNS = "MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks"
VRD_COLUMNS = "ImageID,LabelName1,LabelName2,XMin1,XMax1,YMin1,YMax1,XMin2,XMax2,YMin2,YMax2,RelationshipLabel"
POINT_COLUMNS = "ImageId,X,Y,Label,EstimatedYesNo,Source,YesVotes,NoVotes,UnsureVotes,TextLabel"
ATTRIBUTES = ("Transparent", "Plastic", "Wooden", "Leather", "Textile")
RELATIONS = ("at", "on", "holds", "plays", "interacts_with", "wears", "inside_of", "under", "hits")
WORDS = ("in", "this", "image", "we", "can", "see", "a", "person", "standing", "on", "the", "road", "and",
         "there", "are", "some", "trees", "building", "sky", "with", "clouds", "car", "table", "holding",
         "bottle", "left", "right", "side", "background", "is", "blurry", "front", "of", "it", "grass", "wall")


def _image_id(index: int) -> str:
    """16 hex digits spread like the official ids (every first digit: every mask zip)."""
    return f"{index * 0x9E3779B97F4A7C15 % (1 << 64):016x}"


def _pool() -> list[str]:
    return sorted(_image_id(index) for index in range(1, POOL_IMAGES + 1))


def listed(pool: list[str]) -> list[str]:
    """The images of the crawl's image list: IMAGE_ROWS spread over the pool."""
    step = len(pool) // IMAGE_ROWS
    return [pool[i * step] for i in range(IMAGE_ROWS)]


def paths_in(folder: Path) -> dict[str, list[Path]]:
    """Where each generated file goes: the catalogue's local paths for V7 train."""
    annotations = VERSIONS[7].annotations
    train = {kind: [folder / source.local_path for source in annotations.of_kind(kind)["train"]] for kind in KINDS}
    return {
        **train,
        "classes": [folder / annotations.class_names.local_path],
        "images": [folder / source.local_path for source in {*sources_for(7, "train"),
                                                              *sources_for(7, "train", boxed_only=True)}],
        "extras": [folder / source.local_path for kind in KINDS for source in annotations.extras.get(kind, ())],
        "zips": [folder / remote.path for remote in annotations.mask_archives["train"].values()],
    }


def generate(folder: Path) -> dict[str, list[Path]]:
    """The files under ``folder``, each made once (written to ``.tmp``, then renamed)."""
    paths = paths_in(folder)
    pool: list[str] | None = None
    labels = [_label(i) for i in range(CLASSES)]
    order = ("classes", "images", "extras", "zips", "masks", "relationships", "narratives", "points")
    for name in order:
        missing = [path for path in paths[name] if not path.exists()]
        if not missing:
            continue
        if pool is None:
            pool = _pool()
        print(f"writing the {name} file(s) (once)", flush=True)
        started = time.perf_counter()
        rng = random.Random(f"{SEED}-{name}")
        if name == "zips":
            for path in missing:
                path.parent.mkdir(parents=True, exist_ok=True)
                with zipfile.ZipFile(path.with_name(path.name + ".tmp"), "w"):
                    pass  # a valid zip with no members
                path.with_name(path.name + ".tmp").rename(path)
            continue
        if name == "narratives":
            _write_narratives(paths[name], rng, pool)
        else:
            for path in missing:
                writer = _WRITERS[name] if name != "extras" else _extra_writer(path)
                _atomic(path, lambda out, writer=writer, rng=rng, pool=pool: writer(out, rng, pool, labels))
        print(f"  {name}: {time.perf_counter() - started:.0f} s, "
              f"{sum(path.stat().st_size for path in paths[name]) / 1e9:.2f} GB", flush=True)
    return paths


def _atomic(path: Path, write: Callable[[IO[str]], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", buffering=1 << 22) as out:
        write(out)
    tmp.rename(path)


def _class_weights(count: int) -> list[float]:
    """Cumulative weights 1/rank: Class 001 ~7% of the rows, Class 250 ~0.06%."""
    total, cumulative = 0.0, []
    for rank in range(count):
        total += 1.0 / (rank + 1)
        cumulative.append(total)
    return cumulative


def _grouped(out: IO[str], rng: random.Random, pool: list[str], rows: int, label: str,
             make: Callable[[str, int], list[str]]) -> None:
    """``rows`` lines, grouped by image in ImageID order as the official files are:
    each pool image gets a random count (mean a little over rows / pool, so the
    rows run out just before the pool does); ``make(image_id, count)`` its lines."""
    mean = 2 * rows / len(pool) * 1.03
    written, chunk, next_report = 0, [], rows // 10
    for image_id in pool:
        count = min(int(rng.random() * mean + rng.random()), rows - written)
        if not count:
            if written >= rows:
                break
            continue
        chunk += make(image_id, count)
        written += count
        if len(chunk) >= CHUNK_LINES:
            out.write("".join(chunk))
            chunk = []
        if written >= next_report:
            print(f"  {label}: {written:,} of {rows:,} rows", flush=True)
            next_report += rows // 10
    out.write("".join(chunk))
    if written < rows:
        raise RuntimeError(f"{label}: the pool ran out at {written} rows")


def _fractions(rng: random.Random, count: int) -> list[str]:
    return [f"{rng.random():.6f}" for _ in range(count)]


def _boxes(rng: random.Random, count: int) -> list[str]:
    """``XMin,XMax,YMin,YMax`` strings."""
    boxes = []
    for _ in range(count):
        x = sorted(rng.random() for _ in range(2))
        y = sorted(rng.random() for _ in range(2))
        boxes.append(f"{x[0]:.6f},{x[1]:.6f},{y[0]:.6f},{y[1]:.6f}")
    return boxes


def _write_masks(out: IO[str], rng: random.Random, pool: list[str], labels: list[str]) -> None:
    cumulative = _class_weights(len(labels))
    plain = {label: label.replace("/", "") for label in labels}
    boxes = _boxes(rng, 4096)
    ious = [f"{rng.uniform(0.4, 1.0):.5f}" for _ in range(512)]
    clicks = [";".join(f"{rng.random():.5f} {rng.random():.5f} {rng.randint(0, 1)}"
                       for _ in range(rng.randint(7, 13))) for _ in range(4096)]
    choices, getrandbits = rng.choices, rng.getrandbits

    def make(image_id: str, count: int) -> list[str]:
        return [f"{image_id}_{plain[label]}_{box_id:08x}.png,{image_id},{label},{box_id:08x},{box},{iou},{click}\n"
                for label, box, iou, click, box_id in zip(
                    choices(labels, cum_weights=cumulative, k=count), choices(boxes, k=count),
                    choices(ious, k=count), choices(clicks, k=count), (getrandbits(32) for _ in range(count)))]

    out.write(MASK_COLUMNS + "\n")
    _grouped(out, rng, pool, MASK_ROWS, "masks", make)


def _write_relationships(out: IO[str], rng: random.Random, pool: list[str], labels: list[str]) -> None:
    """A third of the relationships ``is`` an attribute (LabelName2 an attribute MID)."""
    cumulative = _class_weights(len(labels))
    attributes = [_attribute(i) for i in range(len(ATTRIBUTES))]
    boxes = _boxes(rng, 4096)
    choices, random_ = rng.choices, rng.random

    def make(image_id: str, count: int) -> list[str]:
        lines = []
        for first, second, box1, box2 in zip(choices(labels, cum_weights=cumulative, k=count),
                                             choices(labels, cum_weights=cumulative, k=count),
                                             choices(boxes, k=count), choices(boxes, k=count)):
            if random_() < 0.33:
                lines.append(f"{image_id},{first},{choices(attributes)[0]},{box1},{box1},is\n")
            else:
                lines.append(f"{image_id},{first},{second},{box1},{box2},{choices(RELATIONS)[0]}\n")
        return lines

    out.write(VRD_COLUMNS + "\n")
    _grouped(out, rng, pool, RELATIONSHIP_ROWS, "relationships", make)


def _write_points(out: IO[str], rng: random.Random, pool: list[str], labels: list[str]) -> None:
    """Yes for ~60% of the points, no ~30%, unsure the rest; votes and sources as V7's."""
    cumulative = _class_weights(len(labels))
    places = [f"{rng.random():.4f},{rng.random():.4f}" for _ in range(8192)]
    tails = []
    for _ in range(256):
        yes, no, unsure = rng.randint(0, 3), rng.randint(0, 3), rng.randint(0, 1)
        answer = rng.choices(("yes", "no", "unsure"), (6, 3, 1))[0]
        tails.append(f"{answer},{rng.choice(('cs', 'ih', 'nn'))},{yes},{no},{unsure},")
    choices = rng.choices

    def make(image_id: str, count: int) -> list[str]:
        return [f"{image_id},{place},{label},{tail}\n" for place, label, tail in zip(
            choices(places, k=count), choices(labels, cum_weights=cumulative, k=count), choices(tails, k=count))]

    out.write(POINT_COLUMNS + "\n")
    _grouped(out, rng, pool, POINT_ROWS, "points", make)


def _narrative_bodies(rng: random.Random, count: int) -> list[str]:
    """What follows the image id in a narrative line (~5 KB): annotator, a
    caption of ~40 words, ~40 timed utterances and three mouse traces. The
    traces are short (~20 points each) so the line has the ~5 KB of the brief."""
    bodies = []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randint(32, 48))
        timed, clock = [], 0.0
        for word in words:
            start, clock = clock, clock + rng.uniform(0.2, 0.6)
            timed.append({"utterance": word, "start_time": round(start, 3), "end_time": round(clock, 3)})
        traces, t = [], 0.0
        for _ in range(3):
            trace = []
            for _ in range(rng.randint(16, 24)):
                t += 0.017
                trace.append({"x": round(rng.random(), 4), "y": round(rng.random(), 4), "t": round(t, 3)})
            traces.append(trace)
        rest = json.dumps({"caption": " ".join(words).capitalize() + ".", "timed_caption": timed, "traces": traces})
        bodies.append(rest[1:-1])
    return bodies


def _write_narratives(paths: list[Path], rng: random.Random, pool: list[str]) -> None:
    """NARRATIVE_LINES lines over NARRATIVE_IMAGES images, in len(paths) parts."""
    images = rng.sample(pool, NARRATIVE_IMAGES)
    images += rng.sample(images, NARRATIVE_LINES - NARRATIVE_IMAGES)
    rng.shuffle(images)
    bodies = _narrative_bodies(rng, 512)
    per_part = -(-len(images) // len(paths))
    for part, path in enumerate(paths):
        ids = images[part * per_part:(part + 1) * per_part]

        def write(out: IO[str], ids: list[str] = ids) -> None:
            for start in range(0, len(ids), 10_000):
                out.write("".join(
                    f'{{"dataset_id": "open_images", "image_id": "{image_id}", "annotator_id": {annotator}, '
                    f'{body}, "voice_recording": "open_images_train_v6/open_images_train_v6_{image_id}_'
                    f'{annotator}.ogg"}}\n'
                    for image_id, annotator, body in zip(ids[start:start + 10_000],
                                                         (rng.randrange(200) for _ in range(10_000)),
                                                         rng.choices(bodies, k=10_000))))

        if not path.exists():
            _atomic(path, write)
        print(f"  narratives: part {part + 1} of {len(paths)}", flush=True)


def _attribute(index: int) -> str:
    return f"/m/1{index:05x}"


def _write_classes(out: IO[str], rng: random.Random, pool: list[str], labels: list[str]) -> None:
    """V7's class descriptions have a header row."""
    out.write("LabelName,DisplayName\n")
    out.writelines(f"{label},Class {i:03d}\n" for i, label in enumerate(labels))


def _write_images(out: IO[str], rng: random.Random, pool: list[str], labels: list[str]) -> None:
    """The listed images, with URLs where nothing listens: each selected row is a fast failure."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(IMAGE_INFO_COLUMNS)
    for index, image_id in enumerate(listed(pool), 1):
        row = dict.fromkeys(IMAGE_INFO_COLUMNS, "")
        row.update(ImageID=image_id, Subset="train", OriginalURL=REFUSED_URL.format(index),
                   OriginalSize="1000", OriginalMD5="AAAAAAAAAAAAAAAAAAAAAA==", Rotation="0")
        writer.writerow(row.values())


def _extra_writer(path: Path) -> Callable[[IO[str], random.Random, list[str], list[str]], None]:
    """The files explaining the kinds: segmentation classes, attribute names, triplets."""
    def segmentation(out: IO[str], rng: random.Random, pool: list[str], labels: list[str]) -> None:
        out.writelines(f"{label}\n" for label in labels[:350])

    def attributes(out: IO[str], rng: random.Random, pool: list[str], labels: list[str]) -> None:
        out.writelines(f"{_attribute(i)},{name}\n" for i, name in enumerate(ATTRIBUTES))

    def triplets(out: IO[str], rng: random.Random, pool: list[str], labels: list[str]) -> None:
        out.write("LabelName1,LabelName2,RelationshipLabel\n")
        out.writelines(f"{rng.choice(labels)},{rng.choice(labels)},{rng.choice(RELATIONS)}\n" for _ in range(1000))

    if path.name.endswith(".txt"):
        return segmentation
    return attributes if "attributes" in path.name else triplets


_WRITERS = {"classes": _write_classes, "images": _write_images, "masks": _write_masks,
            "relationships": _write_relationships, "points": _write_points}


# Log lines whose first appearance is timed (seconds after the process started).
MARKS = {
    "scan_started_s": "Finding the images of",
    "selected_s": "images carry",
    "writing_s": "Writing the annotations",
}


def _rss(proc: psutil.Process) -> tuple[int, int]:
    """The RSS of the process tree (the crawl's processes and their supervisor), and its largest member's."""
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    sizes = []
    for member in members:
        try:
            sizes.append(member.memory_info().rss)
        except psutil.Error:
            pass
    return sum(sizes), max(sizes, default=0)


def _timed_crawl(kind: str, store: Path, log: Path, ids: Path | None) -> dict:
    selection = ["-a", f"ids={ids}"] if ids else ["-a", f"classes={','.join(WANTED)}"]
    argv = [
        sys.executable, "-m", "scrapy", "crawl", "openimages", "-a", "version=7", "-a", "subset=train",
        *selection, "-a", f"annotations={kind}", "-a", "download_metadata=false",
        "-s", f"IMAGES_STORE={store}", "-s", "RETRY_TIMES=0", "-s", "LOG_LEVEL=INFO", *LOCAL_HOSTS_ALLOWED,
    ]
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    proc = psutil.Process(process.pid)
    peak = peak_selecting = 0
    seen: dict[str, float] = {}
    wrote, written_s = 0, None
    peak_process = 0
    while process.poll() is None:
        rss, largest = _rss(proc)
        peak, peak_process = max(peak, rss), max(peak_process, largest)
        if "selected_s" not in seen:
            peak_selecting = peak
        text = log.read_text(errors="replace")
        now = round(time.perf_counter() - started, 1)
        for key, mark in MARKS.items():
            if key not in seen and mark in text:
                seen[key] = now
        processes = re.search(r"^\[\d+/(\d+)\]", text, re.MULTILINE)
        if ("all_selected_s" not in seen and processes
                and text.count(" images carry ") >= int(processes.group(1))):
            seen["all_selected_s"] = now  # every process has its selection
        if text.count("Wrote ") > wrote:  # the time of the last "Wrote ..." line
            wrote, written_s = text.count("Wrote "), now
        time.sleep(0.2)
    wall = time.perf_counter() - started
    text = log.read_text(errors="replace")
    selected = re.search(r"(\d+) train images carry", text)
    result = {
        "returncode": process.returncode,
        "wall_s": round(wall, 1),
        **seen,
        "processes": int(processes.group(1)) if (processes := re.search(r"^\[\d+/(\d+)\]", text, re.MULTILINE))
        else 1,
        "peak_rss_mb": round(peak / 2**20),
        "peak_process_rss_mb": round(peak_process / 2**20),
        "images_selected": int(selected.group(1)) if selected else None,
        "annotation_rows_written": sum(int(n) for n in re.findall(r"Wrote \S+: (\d+) rows", text)),
        "errors": [line[-300:] for line in text.splitlines() if " ERROR: " in line or "Traceback" in line][:5],
    }
    if selected:
        result["peak_rss_selecting_mb"] = round(peak_selecting / 2**20)
    if "writing_s" in seen and written_s is not None:
        result["written_s"] = written_s
        result["annotations_s"] = round(written_s - seen["writing_s"], 1)
    return result


def probe(work: Path, cache: Path, args: argparse.Namespace) -> dict:
    folder = cache / "kinds-v7"
    paths = generate(folder)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ids = work / "ids.txt"
    ids.write_text("".join(f"{image_id}\n" for image_id in listed(_pool())))
    result: dict = {"classes": list(WANTED), "listed_images": IMAGE_ROWS}
    sentences = []
    for kind in KINDS:
        files = paths[kind]
        size = sum(path.stat().st_size for path in files)
        rows = {"masks": MASK_ROWS, "points": POINT_ROWS, "relationships": RELATIONSHIP_ROWS,
                "narratives": NARRATIVE_LINES}[kind]
        print(f"crawling with -a annotations={kind}", flush=True)
        run = _timed_crawl(kind, store_with_cache(work, folder, "*"), work / f"{kind}.log",
                           ids if kind == "narratives" else None)
        run.update(file_gb=round(size / 1e9, 2), files=len(files), rows=rows)
        if "scan_started_s" in run and "selected_s" in run:
            scan = max(run["selected_s"] - run["scan_started_s"], 0.1)
            run.update(selection_scan_s=round(scan, 1), selection_mb_per_s=round(size / 1e6 / scan),
                       selection_rows_per_s=round(rows / scan))
        if run.get("annotations_s"):
            run.update(writing_mb_per_s=round(size / 1e6 / run["annotations_s"]),
                       writing_rows_per_s=round(rows / run["annotations_s"]))
        result[kind] = run
        shutil.rmtree(work / "store", ignore_errors=True)
        if run["returncode"] != 0:
            raise SystemExit(f"the kinds probe's {kind} crawl failed ({run['returncode']}): see {work / kind}.log")
        what = f"{rows:,}-row" if kind != "narratives" else f"{rows:,}-line, {len(files)}-part"
        if kind == "narratives":
            head = (f"narratives ({what}, {run['file_gb']} GB) for the {IMAGE_ROWS} listed images (-a ids): ")
        else:
            head = (f"{kind} ({what}, {run['file_gb']} GB): selection ready {run.get('selected_s')} s after the "
                    f"start ({run['images_selected']:,} images; scan {run.get('selection_scan_s')} s, "
                    f"{run.get('selection_mb_per_s')} MB/s, {run.get('selection_rows_per_s', 0):,} rows/s; "
                    f"every process's {run.get('all_selected_s')} s; peak RSS {run.get('peak_rss_selecting_mb')} MB "
                    f"by then), ")
        sentences.append(
            head + f"writing {run.get('annotations_s')} s ({run['annotation_rows_written']:,} rows"
            f"{'' if kind == 'narratives' else ' of the listed images'}; {run.get('writing_mb_per_s')} MB/s), "
            f"peak RSS {run['peak_rss_mb']} MB (largest process {run['peak_process_rss_mb']} MB), "
            f"whole crawl {run['wall_s']} s."
        )
    processes = result[KINDS[0]]["processes"]
    result["summary"] = (
        f"V7 train annotation files at full size (generated), classes={','.join(WANTED)}, a "
        f"{IMAGE_ROWS}-row image list, {processes} crawl processes (each selects; the first writes): "
        + " ".join(sentence[0].upper() + sentence[1:] for sentence in sentences)
        + " The mask zips are empty (the CSV work is measured, not the PNGs)."
    )
    return result
