"""Results parts: each crawl process appends to files of its own, merged
into the subset's results files when its run ends.

A process crawling K of M (its run's shard, or its share of a multi-process
run) writes ``{Subset}/.parts/images-success.{K}of{M}.csv`` (and the failure
twin), so no two processes ever append to one file. The merge rewrites
``images-success.csv`` with the parts' rows added (a temporary file, then a
rename) and deletes the parts. A journal written just before the
rename names the parts and the merged size, so after a kill -9 at any moment
the next merge knows whether the parts' rows are already in the file: the
union of the file and the parts holds every finished row exactly once.
Callers hold the store's ``results`` lock around merges.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from openimages_crawler.checkpoint.csvfiles import iter_records, read_csv_header, repair_tail
from openimages_crawler.store.layout import JOURNAL_SUFFIX, PART_LABEL, PARTS_DIR, final_of, owned_by, part_pattern

logger = logging.getLogger(__name__)

def parts_by_final(final_patterns: list[str]) -> dict[Path, dict[str, Path]]:
    """Existing parts, by the results file they belong to, by label."""
    found: dict[Path, dict[str, Path]] = {}
    for pattern in final_patterns:
        for name in sorted(glob.glob(part_pattern(pattern))):
            final, label = final_of(Path(name))
            if PART_LABEL.fullmatch(label):
                found.setdefault(final, {})[label] = Path(name)
    return found


def _journal(final: Path) -> Path:
    return final.parent / PARTS_DIR / f"{final.name}{JOURNAL_SUFFIX}"


def recover(final: Path) -> None:
    """Finish or undo a merge a crash interrupted: parts whose rows the file
    already holds are deleted; a merge that did not reach its rename is
    forgotten (its parts stay, to be merged again)."""
    journal = _journal(final)
    for temp in journal.parent.glob(f"{glob.escape(final.name)}.merging-*"):
        temp.unlink(missing_ok=True)
    try:
        record = json.loads(journal.read_text())
    except FileNotFoundError:
        return
    except ValueError:
        record = {}
    try:
        merged = final.stat().st_size == record.get("size")
    except FileNotFoundError:
        merged = False
    if merged:
        for name in record.get("parts", []):
            (journal.parent / Path(name).name).unlink(missing_ok=True)
    journal.unlink()


def recover_all(final_patterns: list[str]) -> None:
    for pattern in final_patterns:
        for name in glob.glob(str(Path(pattern).parent / PARTS_DIR / f"*{JOURNAL_SUFFIX}")):
            journal = Path(name)
            recover(journal.parent.parent / journal.name.removesuffix(JOURNAL_SUFFIX))


def merge(final: Path, parts: list[Path]) -> int:
    """Append the rows of ``parts`` to ``final`` (atomically) and delete the
    parts; returns the rows added."""
    recover(final)
    parts = [part for part in parts if part.exists()]
    for part in parts:
        repair_tail(part)
    repair_tail(final)
    header = read_csv_header(final)
    temp = final.parent / PARTS_DIR / f"{final.name}.merging-{os.getpid()}"
    rows = 0
    with open(temp, "wb") as out:
        if header is not None:
            with open(final, "rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
        for part in parts:
            with open(part, "rb") as source:
                records = iter_records(source)
                first = next(records, None)
                if first is None:
                    continue
                if header is None:
                    out.write(first)
                    header = read_csv_header(part)
                for record in records:
                    out.write(record)
                    rows += 1
        out.flush()
        os.fsync(out.fileno())
    if not rows:
        temp.unlink()
        for part in parts:
            part.unlink(missing_ok=True)
        return 0
    journal = _journal(final)
    record = json.dumps({"size": temp.stat().st_size, "parts": [part.name for part in parts]})
    journal_temp = journal.with_name(journal.name + ".new")
    journal_temp.write_text(record)
    os.replace(journal_temp, journal)
    os.replace(temp, final)
    for part in parts:
        part.unlink(missing_ok=True)
    journal.unlink()
    return rows


def merge_owned(final_patterns: list[str], index: int = 1, count: int = 1) -> int:
    """Merge every part that lies in shard ``index`` of ``count`` (all parts
    for 1 of 1) into its results file; the rows merged."""
    merged = 0
    for final, parts in parts_by_final(final_patterns).items():
        mine = [path for label, path in sorted(parts.items()) if owned_by(label, index, count)]
        if mine:
            rows = merge(final, mine)
            if rows:
                logger.info("%s: %d rows merged from %d parts", final, rows, len(mine))
            merged += rows
        try:
            (final.parent / PARTS_DIR).rmdir()  # only when empty
        except OSError:
            pass
    return merged


def all_results(final_patterns: list[str]) -> Iterator[Path]:
    """Every results file and part the patterns cover (what the ledger reads)."""
    for pattern in final_patterns:
        for name in sorted(glob.glob(pattern)) + sorted(glob.glob(part_pattern(pattern))):
            yield Path(name)
