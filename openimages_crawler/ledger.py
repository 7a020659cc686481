"""What earlier runs already recorded, read back from the results CSVs.

The results files are the crawl's checkpoint: a row found in either of them
is accounted for and is not recorded again. ImageIDs are kept compactly (16
hex digits as one uint64 in a sorted array) so that millions of them fit in
tens of megabytes.
"""

from __future__ import annotations

import glob
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .catalogue import FAILURE_COLUMNS
from .feeds import read_csv_header, repair_tail
from .rows import MetadataError

logger = logging.getLogger(__name__)

HEX_ID = re.compile(r"[0-9a-f]{16}")
_CHUNK_ROWS = 1_000_000


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


def read_ids(path: Path) -> IdSet:
    """ImageIDs of one results CSV (repaired first if a crash tore its tail)."""
    repair_tail(path)
    if not read_csv_header(path):
        return IdSet()
    return read_id_column(path)


def read_id_column(path: Path) -> IdSet:
    """The ImageID column of any CSV, read in chunks (the file is not changed)."""
    parts = []
    reader = pd.read_csv(
        path,
        usecols=["ImageID"],
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        chunksize=_CHUNK_ROWS,
    )
    with reader:
        for chunk in reader:
            parts.append(IdSet(chunk["ImageID"].tolist()))
    return IdSet.union(parts)


class ResultsLedger:
    """The ImageIDs already in a success file and in a failure file."""

    def __init__(self, succeeded: IdSet, failed: IdSet) -> None:
        self.succeeded = succeeded
        self.failed = failed

    @classmethod
    def load(cls, files: dict[str, list[str]], header: list[str]) -> ResultsLedger:
        """Read the results files; ``files`` maps ``"success"``/``"failure"`` to
        glob patterns. Each file must have the input's ``header`` (failure
        files plus FailureReason and FailureDetails)."""
        sets = {}
        for kind, patterns in files.items():
            wanted = header + (list(FAILURE_COLUMNS) if kind == "failure" else [])
            parts = []
            for pattern in patterns:
                for name in sorted(glob.glob(pattern)):
                    path = Path(name)
                    found = read_csv_header(path)
                    if found and found != wanted:
                        raise MetadataError(
                            f"{path} has the columns {','.join(found)} but this metadata "
                            f"gives {','.join(wanted)}: use another IMAGES_STORE or the "
                            "metadata this store was built from"
                        )
                    parts.append(read_ids(path))
            sets[kind] = IdSet.union(parts)
        ledger = cls(sets.get("success", IdSet()), sets.get("failure", IdSet()))
        if ledger.succeeded or ledger.failed:
            logger.info(
                "Already recorded: %d successes, %d failures",
                len(ledger.succeeded),
                len(ledger.failed),
            )
        return ledger
