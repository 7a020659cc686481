"""The commands compared by the benchmark, and how each one's images are counted."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.corpus import Corpus
from bench.servers import LOCAL_HOSTS_ALLOWED, Server

REPO = Path(__file__).resolve().parent.parent
IMG2DATASET_VERSION = "1.47.0"
# The targets: the matrix runs these unless --only names others.
TARGETS = ("ours_shrink", "ours_shrink_1core", "i2d_largest", "baseline", "limit_fast")
# sitecustomize.py turning urllib's certificate checks off, for img2dataset only.
UNVERIFIED_TLS = REPO / "bench" / "tls_unverified"


@dataclass
class Inputs:
    """What every contender reads: metadata, URL list, local files."""

    metadata: Path
    url_list: Path
    files: Path
    images: int
    image_bytes: int
    img2dataset_python: Path | None
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)


def inputs_for(corpus: Corpus, server: Server, protocol: str, work: Path, img2dataset_python: Path | None,
               rows: int | None = None) -> Inputs:
    """The corpus's metadata and URL list over ``protocol`` from ``server``, written into ``work``;
    ``rows`` rows cycle through the corpus's files (its size by default)."""
    base = server.base_url(protocol)
    work.mkdir(parents=True, exist_ok=True)
    count = rows or len(corpus.manifest)
    return Inputs(
        metadata=corpus.metadata_for(base, work / f"images-{corpus.shape}-{protocol}.csv", rows=count),
        url_list=corpus.url_list_for(base, work / f"urls-{corpus.shape}-{protocol}.csv", rows=count),
        files=corpus.files,
        images=count,
        image_bytes=corpus.bytes_of(count),
        img2dataset_python=img2dataset_python,
    )


@dataclass
class Contender:
    key: str
    label: str
    command: Callable[[Inputs, Path], list[str]]
    count: Callable[[Path, Path], int]  # (output dir, log) -> images done
    needs_network: bool = True
    env: dict[str, str] = field(default_factory=dict)


def _success_rows(out: Path, log: Path) -> int:
    path = out / "train" / "images-success.csv"
    if not path.exists():
        return 0
    with open(path, newline="") as handle:
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)


def _printed_count(out: Path, log: Path) -> int:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return int(lines[-1]) if lines and lines[-1].strip().isdigit() else 0


def _img2dataset_successes(out: Path, log: Path) -> int:
    return sum(json.loads(path.read_text()).get("successes", 0) for path in out.glob("*_stats.json"))


# Runs a command on the first CPU only (our auto process count then sees one core).
ONE_CORE = ["taskset", "-c", "0"]


def ours(key: str, label: str, *settings: str, prefix: tuple[str, ...] = ()) -> Contender:
    """Our crawl. Over HTTPS it checks no certificate: Scrapy's default
    DOWNLOAD_VERIFY_CERTIFICATES=False, which the project keeps."""

    def command(inputs: Inputs, out: Path) -> list[str]:
        argv = [
            *prefix,
            sys.executable, "-m", "scrapy", "crawl", "openimages",
            "-a", f"metadata={inputs.metadata}",
            "-s", f"IMAGES_STORE={out}", *LOCAL_HOSTS_ALLOWED,
        ]
        for setting in settings:
            argv += ["-s", setting]
        return argv

    return Contender(key, label, command, _success_rows)


def img2dataset(key: str, label: str, resize_mode: str, threads: int, one_core: bool = False,
                output_format: str = "files") -> Contender:
    """Tuned fairly: a process per core (one, pinned, with ``one_core``),
    img2dataset's shards (its units of work, one output file each) small enough
    to use them all, MD5 verified like ours, no extra hash or EXIF extraction,
    same JPEG quality."""

    def command(inputs: Inputs, out: Path) -> list[str]:
        assert inputs.img2dataset_python is not None
        processes = 1 if one_core else inputs.cores
        samples_per_shard = max(50, inputs.images // (processes * 4))
        args = {
            "url_list": str(inputs.url_list),
            "input_format": "csv",
            "url_col": "url",
            "output_folder": str(out),
            "output_format": output_format,
            "processes_count": processes,
            "thread_count": threads,
            "image_size": 224,
            "resize_mode": resize_mode,
            "resize_only_if_bigger": resize_mode == "keep_ratio_largest",
            "encode_quality": 90,
            "number_sample_per_shard": samples_per_shard,
            "compute_hash": "md5",  # it insists on computing the hash it verifies
            "verify_hash": ["md5", "md5"],
            "extract_exif": False,
            "timeout": 10,
            "retries": 0,
        }
        code = (
            "import json, sys; from img2dataset import download; "
            "download(**json.loads(sys.argv[1]))"
        )
        return [*(ONE_CORE if one_core else []), str(inputs.img2dataset_python), "-c", code, json.dumps(args)]

    # No update check over the network from albumentations on import; no certificate checks.
    env = {"NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(UNVERIFIED_TLS)}
    return Contender(key, label, command, _img2dataset_successes, env=env)


def baseline(processes: int) -> Contender:
    def command(inputs: Inputs, out: Path) -> list[str]:
        return [
            sys.executable, "-m", "bench.baseline", str(inputs.url_list), str(out),
            "--processes", str(processes),
        ]

    return Contender(
        "baseline", f"requests + hashlib + Pillow thumbnail, Pool({processes})", command, _printed_count
    )


def limit(path: str) -> Contender:
    label = {
        "fast": "Pillow limit: our fast path (reduced JPEG decode), no network",
        "plain": "Pillow limit: full decode + Lanczos, no network",
    }[path]

    def command(inputs: Inputs, out: Path) -> list[str]:
        return [sys.executable, "-m", "bench.limit", str(inputs.files), "--path", path]

    return Contender(f"limit_{path}", label, command, _printed_count, needs_network=False)


SHRINK_224 = ("OPENIMAGES_RESIZE_MODE=ShrinkToFit", "OPENIMAGES_RESIZE_SIZE=224")
PACK_SIZE = 1000  # images per pack of the container contenders


def ours_shrink() -> Contender:
    return ours("ours_shrink", "ours: ShrinkToFit 224, no originals, all cores (OPENIMAGES_PROCESSES=auto)",
                *SHRINK_224)


def all_contenders(img2dataset_threads: int, baseline_processes: int, with_img2dataset: bool) -> list[Contender]:
    contenders = [
        ours_shrink(),
        ours("ours_shrink_1core", "ours: ShrinkToFit 224 on one core (taskset -c 0)", *SHRINK_224, prefix=tuple(ONE_CORE)),
        ours(
            "ours_fillcrop", "ours: FillCrop 224, no originals",
            "OPENIMAGES_RESIZE_MODE=FillCrop", "OPENIMAGES_RESIZE_SIZE=224",
        ),
        ours("ours_fitpad", "ours: FitPad 224 (letterboxed square), no originals",
             "OPENIMAGES_RESIZE_MODE=FitPad", "OPENIMAGES_RESIZE_SIZE=224"),
        ours("ours_shortside", "ours: ShortSide 224, no originals",
             "OPENIMAGES_RESIZE_MODE=ShortSide", "OPENIMAGES_RESIZE_SIZE=224"),
        ours(
            "ours_shrink_wds", "ours: ShrinkToFit 224 as WebDataset packs of 1,000, all cores",
            *SHRINK_224, "OPENIMAGES_RESIZE_CONTAINER=webdataset", f"OPENIMAGES_SHARD_SIZE={PACK_SIZE}",
        ),
        ours(
            "ours_originals", "ours: originals only (verify + save, no resize)",
            "OPENIMAGES_SAVE_ORIGINALS=True", "OPENIMAGES_RESIZE=False",
        ),
        ours(
            "ours_two_outputs", "ours: FillCrop 224 JPEG + ShrinkToFit 640 WebP in one pass",
            "OPENIMAGES_OUTPUTS=" + json.dumps([
                {"dir": "crop224", "mode": "FillCrop", "size": 224},
                {"dir": "fit640", "mode": "ShrinkToFit", "size": 640, "format": "webp"},
            ]),
        ),
    ]
    if with_img2dataset:
        contenders += [
            img2dataset(
                "i2d_largest", "img2dataset keep_ratio_largest 224", "keep_ratio_largest",
                img2dataset_threads,
            ),
            img2dataset(
                "i2d_largest_1core", "img2dataset keep_ratio_largest 224, processes_count 1 on one core",
                "keep_ratio_largest", img2dataset_threads, one_core=True,
            ),
            img2dataset(
                "i2d_largest_wds", "img2dataset keep_ratio_largest 224, output_format webdataset",
                "keep_ratio_largest", img2dataset_threads, output_format="webdataset",
            ),
            img2dataset("i2d_center_crop", "img2dataset center_crop 224", "center_crop", img2dataset_threads),
            img2dataset("i2d_border", "img2dataset border 224 (FitPad's peer)", "border", img2dataset_threads),
            img2dataset("i2d_keep_ratio", "img2dataset keep_ratio 224 (ShortSide's peer)", "keep_ratio",
                        img2dataset_threads),
            img2dataset("i2d_no", "img2dataset resize_mode=no", "no", img2dataset_threads),
        ]
    contenders += [baseline(baseline_processes), limit("fast"), limit("plain")]
    return contenders
