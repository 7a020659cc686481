"""What earlier runs already recorded, read back from the results CSVs.

The results files are the crawl's checkpoint: a row found in either of them
is accounted for and is not recorded again. ImageIDs are kept as IdSets
(8 bytes an id), so millions of them fit in tens of megabytes.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path

from openimages_crawler.dataset.catalogue import FAILURE_COLUMNS
from openimages_crawler.dataset.idset import IdSet, read_id_column
from openimages_crawler.dataset.rows import MetadataError
from openimages_crawler.store.csvfiles import read_csv_header, repair_tail

logger = logging.getLogger(__name__)


def read_ids(path: Path) -> IdSet:
    """ImageIDs of one results CSV (repaired first if a crash tore its tail)."""
    repair_tail(path)
    if not read_csv_header(path):
        return IdSet()
    return read_id_column(path)


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
