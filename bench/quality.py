"""Output quality of the fast path: mean absolute pixel difference (0–255)
between the crawler's outputs and a plain full-decode Lanczos resize of the
same corpus files, per resize mode."""

from __future__ import annotations

import numpy as np

from bench.corpus import Corpus
from openimages_crawler.imaging.pillow import (
    REDUCING_GAP,
    RESIZE_MODES,
    ResizeSpec,
    decode,
    resize,
    upright_rgb,
)

MAX_PIXELS = 178_956_970


def compare(corpus: Corpus, sample: int = 200, size: int = 224) -> dict:
    paths = corpus.paths()[:sample]
    result: dict = {"sample": len(paths), "size": size, "reducing_gap": REDUCING_GAP, "modes": {}}
    for mode in RESIZE_MODES:
        spec = ResizeSpec(mode=mode, size=size)
        diffs = []
        for path in paths:
            data = path.read_bytes()
            plain = resize(upright_rgb(decode(data, MAX_PIXELS)), spec)
            fast = resize(
                upright_rgb(decode(data, MAX_PIXELS, reduce_for=(spec,))), spec, reducing_gap=REDUCING_GAP
            )
            assert fast.size == plain.size, (path, fast.size, plain.size)
            diffs.append(np.abs(np.asarray(fast, np.int16) - np.asarray(plain, np.int16)).mean())
        result["modes"][mode] = {
            "mean": round(float(np.mean(diffs)), 2),
            "p99": round(float(np.percentile(diffs, 99)), 2),
            "max": round(float(np.max(diffs)), 2),
        }
    modes = ", ".join(
        f"{mode} {values['mean']} (p99 {values['p99']}, max {values['max']})"
        for mode, values in result["modes"].items()
    )
    result["summary"] = (
        f"fast path vs full-decode Lanczos on {len(paths)} corpus files at {size} px, mean absolute "
        f"pixel difference (0–255): {modes}; output sizes identical."
    )
    return result
