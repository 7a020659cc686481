"""A cached corpus shaped like Flickr originals, and its metadata.

Photo-like JPEGs (smooth multi-scale structure, texture and sensor grain, so
they compress like photos) with the longest side log-uniform in 640–4000 px
(PNGs at most 1200 px),
quality 85–95, a few PNGs and a few EXIF-rotated JPEGs. Sizes come out at
0.1–5 MB with a median near 0.6 MB. Metadata rows carry the real byte size
and base64 MD5, in the images.csv format, spread over 16 hosts
(127.0.0.1–127.0.0.16, like the 16 Flickr hosts of the real URLs).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from openimages_crawler.dataset.catalogue import IMAGES_CSV_COLUMNS

HOSTS = 16
_TILE = 1024
PNG_EVERY = 50  # one PNG in 50 files
ROTATED_EVERY = 40  # one EXIF-rotated JPEG in 40


@dataclass(frozen=True)
class Corpus:
    """The files, the metadata that describes them, and how to reach them."""

    root: Path

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def metadata(self) -> Path:
        """images.csv rows; ``{base}`` in URLs is replaced per server by ``metadata_for``."""
        return self.root / "images.csv"

    @property
    def manifest(self) -> list[dict]:
        return json.loads((self.root / "manifest.json").read_text())

    def paths(self) -> list[Path]:
        return [self.files / entry["path"] for entry in self.manifest]

    def total_bytes(self) -> int:
        return sum(entry["size"] for entry in self.manifest)

    def metadata_for(self, port: int, out: Path, *, rows: int | None = None) -> Path:
        """images.csv with URLs on the 16 bench hosts at ``port``."""
        manifest = self.manifest
        count = len(manifest) if rows is None else rows
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(IMAGES_CSV_COLUMNS)
            for index in range(count):
                writer.writerow(metadata_row(manifest[index % len(manifest)], index, port))
        return out

    def url_list_for(self, port: int, out: Path) -> Path:
        """The same URLs for img2dataset and the baseline: url, hex md5, size."""
        with open(out, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["url", "md5", "size", "key"])
            for index, entry in enumerate(self.manifest):
                writer.writerow([url(entry, index, port), entry["md5_hex"], entry["size"], entry["id"]])
        return out


def url(entry: dict, index: int, port: int) -> str:
    return f"http://127.0.0.{1 + index % HOSTS}:{port}/photos/{entry['path']}"


def image_id(index: int) -> str:
    return hashlib.sha1(f"bench-{index}".encode()).hexdigest()[:16]


def metadata_row(entry: dict, index: int, port: int) -> list[str]:
    """One images.csv row; a fresh ImageID per index so a cycled corpus stays unique."""
    fields = {
        "ImageID": image_id(index),
        "Subset": "train",
        "OriginalURL": url(entry, index, port),
        "OriginalLandingURL": f"https://www.flickr.com/photos/bench/{index}",
        "License": "https://creativecommons.org/licenses/by/2.0/",
        "AuthorProfileURL": f"https://www.flickr.com/people/bench{index % 997}/",
        "Author": f"Photographer {index % 997}",
        "Title": f"Photo {index}, taken somewhere",
        "OriginalSize": str(entry["size"]),
        "OriginalMD5": entry["md5"],
        "Thumbnail300KURL": "",
    }
    return [fields[name] for name in IMAGES_CSV_COLUMNS]


def _grain_tile(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.normal(0, 1, (_TILE // 4, _TILE // 4, 3)).astype(np.float32)
    texture = np.stack(
        [np.asarray(Image.fromarray(small[..., c]).resize((_TILE, _TILE), Image.BICUBIC)) for c in range(3)],
        -1,
    )
    grain = texture * 14 + rng.normal(0, 4, (_TILE, _TILE, 1)).astype(np.float32)
    return np.clip(grain, -127, 127).astype(np.int16)


def photo(width: int, height: int, rng: np.random.Generator, grain: np.ndarray) -> Image.Image:
    """Smooth structure at three scales, upsampled, plus a shifted texture/grain tile."""
    small_w, small_h = max(8, width // 8), max(8, height // 8)
    longest = max(small_w, small_h)
    acc = np.zeros((small_h, small_w, 3), np.float32)
    amplitude = 80.0
    for cells in (3, 10, 36):
        shape = (max(2, cells * small_h // longest), max(2, cells * small_w // longest), 3)
        noise = rng.normal(0, 1, shape).astype(np.float32)
        acc += amplitude * np.stack(
            [
                np.asarray(Image.fromarray(noise[..., c]).resize((small_w, small_h), Image.BICUBIC))
                for c in range(3)
            ],
            -1,
        )
        amplitude *= 0.45
    base = Image.fromarray(np.clip(acc + 128, 0, 255).astype(np.uint8), "RGB")
    pixels = np.asarray(base.resize((width, height), Image.BICUBIC)).astype(np.int16)
    shift = rng.integers(0, _TILE, 2)
    tile = np.roll(grain, tuple(shift), (0, 1))
    pixels += np.tile(tile, (height // _TILE + 1, width // _TILE + 1, 1))[:height, :width]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _make(index: int, seed: int, out: Path) -> dict:
    rng = np.random.default_rng((seed, index))
    grain = _GRAIN if _GRAIN is not None else _grain_tile(seed)
    longest = int(math.exp(rng.uniform(math.log(640), math.log(4000))))
    is_png = index % PNG_EVERY == PNG_EVERY - 1
    if is_png:
        longest = min(longest, 1200)  # lossless grain is large: keep PNGs within the size spread
    ratio = rng.choice([4 / 3, 3 / 2, 16 / 9, 1.0])
    shortest = max(1, int(longest / ratio))
    width, height = (shortest, longest) if rng.random() < 0.3 else (longest, shortest)
    image = photo(width, height, rng, grain)
    data = io.BytesIO()
    if is_png:
        ext = "png"
        image.save(data, "PNG", compress_level=6)
    else:
        ext = "jpg"
        options: dict = {"quality": int(rng.choice([85, 90, 95]))}
        if index % ROTATED_EVERY == ROTATED_EVERY - 1:
            exif = Image.Exif()
            exif[0x0112] = 6  # rotate 90° clockwise to view
            options["exif"] = exif.tobytes()
        image.save(data, "JPEG", **options)
    body = data.getvalue()
    name = f"{image_id(index)}.{ext}"
    (out / name).write_bytes(body)
    digest = hashlib.md5(body).digest()
    return {
        "id": image_id(index),
        "path": name,
        "size": len(body),
        "md5": base64.b64encode(digest).decode(),
        "md5_hex": digest.hex(),
        "width": width,
        "height": height,
    }


_GRAIN: np.ndarray | None = None


def _init_worker(seed: int) -> None:
    global _GRAIN
    _GRAIN = _grain_tile(seed)


def build(cache: Path, count: int, seed: int = 7, workers: int = 2) -> Corpus:
    """The corpus of ``count`` files, generated once under ``cache``."""
    corpus = Corpus(cache / f"corpus-{count}-{seed}")
    if (corpus.root / "manifest.json").exists():
        return corpus
    corpus.files.mkdir(parents=True, exist_ok=True)
    print(f"generating a {count}-file corpus in {corpus.root} (once)", flush=True)
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(seed,)) as pool:
        manifest = list(
            pool.map(_make, range(count), [seed] * count, [corpus.files] * count, chunksize=8)
        )
    tmp = corpus.root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest))
    tmp.rename(corpus.root / "manifest.json")
    return corpus


def describe(corpus: Corpus) -> dict:
    sizes = sorted(entry["size"] for entry in corpus.manifest)
    pixels = sorted(max(entry["width"], entry["height"]) for entry in corpus.manifest)
    return {
        "files": len(sizes),
        "total_mb": round(sum(sizes) / 1e6, 1),
        "size_min_kb": sizes[0] // 1000,
        "size_median_kb": sizes[len(sizes) // 2] // 1000,
        "size_max_kb": sizes[-1] // 1000,
        "longest_side_min": pixels[0],
        "longest_side_median": pixels[len(pixels) // 2],
        "longest_side_max": pixels[-1],
        "pngs": sum(entry["path"].endswith(".png") for entry in corpus.manifest),
    }
