"""Compact sets of ImageIDs: 16 hex digits as one uint64 in a sorted array,
so that millions of them fit in tens of megabytes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

HEX_ID = re.compile(r"[0-9a-f]{16}")
CHUNK_ROWS = 1_000_000


class IdSet:
    """An immutable set of ImageIDs: hex ids in a sorted uint64 array, others in a set."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        hex_values: list[int] = []
        self.other: set[str] = set()
        for image_id in ids:
            if HEX_ID.fullmatch(image_id):
                hex_values.append(int(image_id, 16))
            else:
                self.other.add(image_id)
        self.hex = np.unique(np.array(hex_values, dtype=np.uint64))

    @classmethod
    def union(cls, parts: Iterable[IdSet]) -> IdSet:
        merged = cls()
        parts = list(parts)
        if parts:
            merged.hex = np.unique(np.concatenate([p.hex for p in parts]))
            merged.other = set().union(*(p.other for p in parts))
        return merged

    def __contains__(self, image_id: str) -> bool:
        if HEX_ID.fullmatch(image_id):
            value = np.uint64(int(image_id, 16))
            index = int(np.searchsorted(self.hex, value))
            return index < len(self.hex) and self.hex[index] == value
        return image_id in self.other

    def __len__(self) -> int:
        return len(self.hex) + len(self.other)

    def overlaps(self, other: IdSet) -> bool:
        return bool(np.intersect1d(self.hex, other.hex).size) or not self.other.isdisjoint(other.other)


def read_id_column(path: Path) -> IdSet:
    """The ImageID column of any CSV, read in chunks (the file is not changed)."""
    import pandas as pd  # noqa: PLC0415 (a crawl of a fresh store never needs it: it starts faster)

    parts = []
    reader = pd.read_csv(
        path,
        usecols=["ImageID"],
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        chunksize=CHUNK_ROWS,
    )
    with reader:
        for chunk in reader:
            parts.append(IdSet(chunk["ImageID"].tolist()))
    return IdSet.union(parts)
