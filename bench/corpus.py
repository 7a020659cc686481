"""Cached corpora of two shapes, and their metadata.

``originals``: photo-like JPEGs (smooth multi-scale structure, texture and
sensor grain, so they compress like photos) whose byte sizes follow the
OriginalSize column of real Open Images rows (SIZE_QUANTILES_KB): each file
draws a target size and a JPEG quality (85, 90 or 95), and gets the pixel
count that the generator's bytes per pixel at that quality gives; one PNG in
50 and one EXIF-rotated JPEG in 40. ``cvdf``: the same files as the CVDF
copies of Open Images are, longest side at most 1024 px (JPEGs re-encoded at
quality 90, PNGs kept PNG), a few hundred KB each.

Metadata rows carry the real byte size and base64 MD5, in the images.csv
format, spread over 16 hosts (127.0.0.1–127.0.0.16, like the 16 Flickr hosts
of the real URLs).
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
from PIL import Image, ImageChops

from openimages_crawler.dataset.catalogue import IMAGES_CSV_COLUMNS

CACHE = Path(__file__).resolve().parent / ".cache"  # corpora, certificate, venvs, work folders
HOSTS = 16
SHAPES = ("originals", "cvdf")
_TILE = 1024
PNG_EVERY = 50  # one PNG in 50 files
ROTATED_EVERY = 40  # one EXIF-rotated JPEG in 40

# OriginalSize (KB) of the 3,000 real V3 rows of /work/shared/openimages-v3-sample/
# {train,validation,test}/images.csv (median 1,145 KB, mean 2,049 KB) at SIZE_PROBABILITIES,
# computed once with numpy.quantile. Sizes drawn between them log-linearly have a median of
# 1,146 KB and a mean of 2,072 KB.
SIZE_PROBABILITIES = (0.0, 0.01, *(step / 20 for step in range(1, 20)), 0.99, 1.0)
SIZE_QUANTILES_KB = (14, 33, 74, 114, 157, 218, 297, 407, 569, 720, 895, 1145, 1451, 1755, 2100,
                     2487, 2906, 3448, 4098, 5262, 6916, 11774, 14987)
# Bytes per pixel of ``photo`` once encoded, by JPEG quality (measured at 1–12 MP: within 3%)
# and as PNG (within 15%): the pixel count of a file is its target size over these.
BYTES_PER_PIXEL = {85: 0.21, 90: 0.295, 95: 0.475, "png": 1.6}
QUALITIES = (85, 90, 95)
# A target that would need more pixels takes quality 95, as large camera originals do.
MAX_PIXELS_BELOW_95 = 24_000_000
CVDF_SIDE = 1024
CVDF_QUALITY = 90


@dataclass(frozen=True)
class Corpus:
    """The files, the metadata that describes them, and how to reach them."""

    root: Path
    shape: str

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def manifest(self) -> list[dict]:
        return json.loads((self.root / "manifest.json").read_text())

    def paths(self) -> list[Path]:
        return [self.files / entry["path"] for entry in self.manifest]

    def total_bytes(self) -> int:
        return sum(entry["size"] for entry in self.manifest)

    def metadata_for(self, base: str, out: Path, *, rows: int | None = None) -> Path:
        """images.csv with URLs under ``base`` (see ``base_url``)."""
        manifest = self.manifest
        count = len(manifest) if rows is None else rows
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(IMAGES_CSV_COLUMNS)
            for index in range(count):
                writer.writerow(metadata_row(manifest[index % len(manifest)], index, base))
        return out

    def url_list_for(self, base: str, out: Path, *, rows: int | None = None) -> Path:
        """The same URLs for img2dataset, the baseline and the bare Scrapy process: url, hex md5,
        size, and a key unique per row (the files cycle past the corpus's end, as in ``metadata_for``)."""
        manifest = self.manifest
        with open(out, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["url", "md5", "size", "key"])
            for index in range(len(manifest) if rows is None else rows):
                entry = manifest[index % len(manifest)]
                writer.writerow([url(entry, index, base), entry["md5_hex"], entry["size"], image_id(index)])
        return out

    def bytes_of(self, rows: int) -> int:
        """What ``rows`` rows of the (cycled) corpus download."""
        sizes = [entry["size"] for entry in self.manifest]
        whole, rest = divmod(rows, len(sizes))
        return whole * sum(sizes) + sum(sizes[:rest])


def base_url(protocol: str, port: int) -> str:
    """The bench hosts' URL prefix for ``protocol`` ("http" or "https"), ``{host}`` standing for 1–16."""
    return f"{protocol}://127.0.0.{{host}}:{port}"


def url(entry: dict, index: int, base: str) -> str:
    return base.format(host=1 + index % HOSTS) + f"/photos/{entry['path']}"


def image_id(index: int) -> str:
    return hashlib.sha1(f"bench-{index}".encode()).hexdigest()[:16]


def metadata_row(entry: dict, index: int, base: str) -> list[str]:
    """One images.csv row; a fresh ImageID per index so a cycled corpus stays unique."""
    fields = {
        "ImageID": image_id(index),
        "Subset": "train",
        "OriginalURL": url(entry, index, base),
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


def target_sizes(count: int, seed: int) -> list[float]:
    """Byte sizes from the real distribution, one in each 1/count slice of it
    (shuffled), so that a small corpus follows it too."""
    rng = np.random.default_rng((seed, count))
    probabilities = (rng.permutation(count) + rng.random(count)) / count
    log_sizes = np.log(np.array(SIZE_QUANTILES_KB) * 1000.0)
    return np.exp(np.interp(probabilities, SIZE_PROBABILITIES, log_sizes)).tolist()


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
    tile = np.roll(grain, tuple(rng.integers(0, _TILE, 2)), (0, 1))
    repeats = (height // _TILE + 1, width // _TILE + 1, 1)

    def layer(part: np.ndarray) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(np.tile(part, repeats)[:height, :width]), "RGB")

    # The grain's positive and negative parts added and subtracted with Pillow's saturating
    # operations: a third of the time of the same sum in int16 clipped by numpy.
    image = base.resize((width, height), Image.BICUBIC)
    image = ImageChops.add(image, layer(np.maximum(tile, 0).astype(np.uint8)))
    return ImageChops.subtract(image, layer(np.maximum(-tile, 0).astype(np.uint8)))


def _dimensions(target: float, is_png: bool, rng: np.random.Generator) -> tuple[int, int, int]:
    """(width, height, JPEG quality) whose encoding comes out near ``target`` bytes."""
    quality = int(rng.choice(QUALITIES))
    if target / BYTES_PER_PIXEL[quality] > MAX_PIXELS_BELOW_95:
        quality = 95
    pixels = target / BYTES_PER_PIXEL["png" if is_png else quality]
    ratio = float(rng.choice([4 / 3, 3 / 2, 16 / 9, 1.0]))
    longest = max(16, round(math.sqrt(pixels * ratio)))
    shortest = max(16, round(longest / ratio))
    portrait = rng.random() < 0.3
    return (shortest, longest, quality) if portrait else (longest, shortest, quality)


def _encode(image: Image.Image, ext: str, quality: int, exif: bytes | None) -> bytes:
    data = io.BytesIO()
    if ext == "png":
        image.save(data, "PNG", compress_level=6)
    else:
        image.save(data, "JPEG", quality=quality, **({"exif": exif} if exif else {}))
    return data.getvalue()


def _entry(key: str, name: str, body: bytes, size: tuple[int, int], out: Path) -> dict:
    """Write ``body`` as ``name`` and describe it for the manifest."""
    (out / name).write_bytes(body)
    digest = hashlib.md5(body).digest()
    return {
        "id": key,
        "path": name,
        "size": len(body),
        "md5": base64.b64encode(digest).decode(),
        "md5_hex": digest.hex(),
        "width": size[0],
        "height": size[1],
    }


def _make(index: int, seed: int, target: float, out: Path) -> dict:
    """One original of about ``target`` bytes."""
    rng = np.random.default_rng((seed, index))
    grain = _GRAIN if _GRAIN is not None else _grain_tile(seed)
    is_png = index % PNG_EVERY == PNG_EVERY - 1
    width, height, quality = _dimensions(target, is_png, rng)
    exif = None
    if not is_png and index % ROTATED_EVERY == ROTATED_EVERY - 1:
        tags = Image.Exif()
        tags[0x0112] = 6  # rotate 90° clockwise to view
        exif = tags.tobytes()
    ext = "png" if is_png else "jpg"
    body = _encode(photo(width, height, rng, grain), ext, quality, exif)
    return _entry(image_id(index), f"{image_id(index)}.{ext}", body, (width, height), out)


def _downscale(entry: dict, source: Path, out: Path) -> dict:
    """The CVDF copy of one original: as it is when small enough, else its
    longest side brought to CVDF_SIDE (EXIF orientation kept)."""
    data = (source / entry["path"]).read_bytes()
    longest = max(entry["width"], entry["height"])
    if longest <= CVDF_SIDE:
        return _entry(entry["id"], entry["path"], data, (entry["width"], entry["height"]), out)
    image = Image.open(io.BytesIO(data))
    size = (max(1, round(image.width * CVDF_SIDE / longest)), max(1, round(image.height * CVDF_SIDE / longest)))
    exif = image.info.get("exif")
    image.draft("RGB", size)  # a reduced JPEG decode, still no smaller than ``size``
    body = _encode(image.resize(size, Image.LANCZOS), entry["path"].rsplit(".", 1)[-1], CVDF_QUALITY, exif)
    return _entry(entry["id"], entry["path"], body, size, out)


_GRAIN: np.ndarray | None = None


def _init_worker(seed: int) -> None:
    global _GRAIN
    _GRAIN = _grain_tile(seed)


def build(cache: Path, count: int, shape: str = "originals", seed: int = 7, workers: int = 2) -> Corpus:
    """The corpus of ``count`` files of ``shape``, generated once under ``cache``
    (a ``cvdf`` one from the ``originals`` one)."""
    corpus = Corpus(cache / f"corpus-{shape}-{count}-{seed}", shape)
    if (corpus.root / "manifest.json").exists():
        return corpus
    source = build(cache, count, "originals", seed, workers) if shape == "cvdf" else None
    corpus.files.mkdir(parents=True, exist_ok=True)
    print(f"generating a {count}-file {shape} corpus in {corpus.root} (once)", flush=True)
    # chunksize 1: file costs vary a hundredfold, and the last big ones must not wait for one worker.
    if source is None:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(seed,)) as pool:
            manifest = list(pool.map(_make, range(count), [seed] * count, target_sizes(count, seed),
                                     [corpus.files] * count))
    else:
        with ProcessPoolExecutor(workers) as pool:
            manifest = list(pool.map(_downscale, source.manifest, [source.files] * count, [corpus.files] * count))
    tmp = corpus.root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest))
    tmp.rename(corpus.root / "manifest.json")
    return corpus


def describe(corpus: Corpus) -> dict:
    sizes = sorted(entry["size"] for entry in corpus.manifest)
    pixels = sorted(max(entry["width"], entry["height"]) for entry in corpus.manifest)
    return {
        "shape": corpus.shape,
        "files": len(sizes),
        "total_mb": round(sum(sizes) / 1e6, 1),
        "size_min_kb": sizes[0] // 1000,
        "size_median_kb": sizes[len(sizes) // 2] // 1000,
        "size_mean_kb": sum(sizes) // len(sizes) // 1000,
        "size_max_kb": sizes[-1] // 1000,
        "longest_side_min": pixels[0],
        "longest_side_median": pixels[len(pixels) // 2],
        "longest_side_max": pixels[-1],
        "pngs": sum(entry["path"].endswith(".png") for entry in corpus.manifest),
    }
