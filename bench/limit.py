"""The Pillow limit: decode + resize to 224 + encode of the corpus files, one
process per core, no network, no writes. ``--path fast`` uses the crawler's
own fast path (reduced JPEG decode); ``--path plain`` a full decode and a
plain Lanczos resize. Prints the number of images done."""

from __future__ import annotations

import argparse
import os
from multiprocessing import Pool
from pathlib import Path

from openimages_crawler.imaging.pillow import (
    REDUCING_GAP,
    ResizeSpec,
    decode,
    resized_bytes,
)

SPEC = ResizeSpec(mode="ShrinkToFit", size=224)
MAX_PIXELS = 178_956_970
_fast = True


def _init(fast: bool) -> None:
    global _fast
    _fast = fast


def convert(path: str) -> int:
    data = Path(path).read_bytes()
    image = decode(data, MAX_PIXELS, reduce_for=(SPEC,) if _fast else ())
    gap = REDUCING_GAP if _fast else None
    return len(resized_bytes(image, SPEC, reducing_gap=gap)) > 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", type=Path)
    parser.add_argument("--path", choices=("fast", "plain"), default="fast")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    paths = sorted(str(path) for path in args.files.iterdir())
    with Pool(args.processes, initializer=_init, initargs=(args.path == "fast",)) as pool:
        print(sum(pool.imap_unordered(convert, paths, chunksize=4)))


if __name__ == "__main__":
    main()
