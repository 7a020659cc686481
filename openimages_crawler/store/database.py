"""The store as a DuckDB database: ``images`` (every recorded or pending row
with its status and where it is stored), ``classes``, ``labels``, ``boxes``.

Built from the files the crawl already keeps (results CSVs, pending lists,
annotation files, class descriptions, shard indexes) and updated
incrementally: a results file that only grew since the last update has just
its new rows read; one that was rewritten (a merge that reconciled failures)
is read again; unchanged files are not read at all. Written in a staging
copy and renamed, so a kill leaves the previous database whole. No Scrapy
import; ``duckdb`` is imported only here.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from openimages_crawler.dataset.annotations import ClassNames
from openimages_crawler.dataset.catalogue import ANNOTATION_FILES, CLASS_NAMES_FILE
from openimages_crawler.store.layout import StoreLayout
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.shards import MANIFEST, join, read_index, read_manifest

logger = logging.getLogger(__name__)

PENDING_DIR = ".pending"  # in the records folder: {part}.csv, the rows a stopped process left in flight
_TAIL_CHECK = 4096  # bytes before the last read end that must be unchanged for an append-only read
MEMORY_LIMIT = "2GB"  # DuckDB spills to disk beyond it: an update fits beside a running crawl


@dataclass(frozen=True, slots=True)
class ResultsFile:
    """A results file (or a pending list) of one subset."""

    path: Path
    subset: str
    status: str  # stored, failed or pending


@dataclass(frozen=True, slots=True)
class MainOutput:
    """The output whose path, size and dimensions ``images`` gives."""

    folder: str
    ext: str  # the files' extension (jpg for originals, whose PNGs are found too)


@dataclass
class DatabaseCounts:
    files_read: int = 0
    rows_added: int = 0
    images: int = 0


def update_database(database: Path, store: LocalStore, layout: StoreLayout, results: list[ResultsFile],
                    main: MainOutput) -> DatabaseCounts:
    """Bring ``database`` up to date with the store (built first if missing)."""
    import duckdb  # noqa: PLC0415 (only the database needs it)

    counts = DatabaseCounts()
    database.parent.mkdir(parents=True, exist_ok=True)
    staging = database.with_name(f".{database.name}.{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)
    if database.is_file():
        shutil.copyfile(database, staging)
    try:
        with duckdb.connect(str(staging), config={"memory_limit": MEMORY_LIMIT}) as con:
            _schema(con)
            con.execute("CREATE TEMP TABLE _touched (ImageID VARCHAR, Subset VARCHAR)")
            for results_file in results:
                counts.rows_added += _load_results(con, results_file, counts)
            _drop_superseded(con)
            _place(con, store, layout, main)
            _load_annotations(con, store, sorted({r.subset for r in results}), counts)
            counts.images = con.execute("SELECT count(*) FROM images").fetchone()[0]
            con.execute("CHECKPOINT")
        os.replace(staging, database)
    finally:
        staging.unlink(missing_ok=True)
        staging.with_name(staging.name + ".wal").unlink(missing_ok=True)
    return counts


def write_pending(records: Path, part: str, header: list[str], rows: list[tuple[dict[str, str], str]]) -> None:
    """A process's pending list ``{records}/.pending/{part}.csv`` (the metadata
    rows and their subset), written whole; removed when nothing is pending."""
    path = records / PENDING_DIR / f"{part}.csv"
    if not rows:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = header if "Subset" in header else [*header, "Subset"]
    temp = path.with_name(f".{path.name}.{os.getpid()}.part")
    with open(temp, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for fields, subset in rows:
            writer.writerow({**fields, "Subset": fields.get("Subset") or subset})
    os.replace(temp, path)


def pending_files(records: Path) -> list[ResultsFile]:
    return [ResultsFile(path, "", "pending") for path in sorted((records / PENDING_DIR).glob("*.csv"))]


def _schema(con: Any) -> None:
    con.execute("CREATE TABLE IF NOT EXISTS _loaded (path VARCHAR PRIMARY KEY, size BIGINT, "
                "mtime_ns BIGINT, tail VARCHAR)")
    con.execute("CREATE TABLE IF NOT EXISTS images (ImageID VARCHAR, Subset VARCHAR, status VARCHAR, "
                "FailureReason VARCHAR, FailureDetails VARCHAR, OriginalURL VARCHAR, output VARCHAR, path VARCHAR, "
                "shard VARCHAR, \"offset\" BIGINT, width INTEGER, height INTEGER, bytes BIGINT, _source VARCHAR)")
    # The official columns every version has, so queries work before any annotation is written.
    con.execute("CREATE TABLE IF NOT EXISTS classes (Subset VARCHAR, LabelName VARCHAR, DisplayName VARCHAR, "
                "ClassIndex INTEGER)")
    con.execute("CREATE TABLE IF NOT EXISTS labels (Subset VARCHAR, ImageID VARCHAR, Source VARCHAR, "
                "LabelName VARCHAR, Confidence DOUBLE)")
    con.execute("CREATE TABLE IF NOT EXISTS boxes (Subset VARCHAR, ImageID VARCHAR, Source VARCHAR, "
                "LabelName VARCHAR, Confidence DOUBLE, XMin DOUBLE, XMax DOUBLE, YMin DOUBLE, YMax DOUBLE)")


def _stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns


def _tail_digest(path: Path, end: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(end - _TAIL_CHECK, 0))
        return hashlib.sha256(handle.read(min(end, _TAIL_CHECK))).hexdigest()


def _load_results(con: Any, results_file: ResultsFile, counts: DatabaseCounts) -> int:
    """The new rows of one results file; the number added."""
    path, key = results_file.path, str(results_file.path)
    known = con.execute("SELECT size, mtime_ns, tail FROM _loaded WHERE path = ?", [key]).fetchone()
    if not path.is_file():
        if known is not None:  # a pending list that a finished run removed
            con.execute("DELETE FROM images WHERE _source = ?", [key])
            con.execute("DELETE FROM _loaded WHERE path = ?", [key])
        return 0
    size, mtime_ns = _stamp(path)
    if known is not None and (known[0], known[1]) == (size, mtime_ns):
        return 0
    start = 0
    if known is not None and size > known[0] and _tail_digest(path, known[0]) == known[2]:
        start = known[0]  # appended to: only the new rows
    else:
        con.execute("DELETE FROM images WHERE _source = ?", [key])
    counts.files_read += 1
    with tempfile.TemporaryDirectory() as folder:
        chunk = Path(folder) / "rows.csv"
        with open(path, "rb") as source, open(chunk, "wb") as out:
            out.write(source.readline())  # the header
            if start:
                source.seek(start)
            shutil.copyfileobj(source, out)
        columns = _columns(chunk)
        _add_columns(con, "images", columns)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _new AS SELECT *, ? AS status, ? AS _source"
            f"{'' if 'Subset' in columns else ', ? AS Subset'} "
            "FROM read_csv(?, header = true, all_varchar = true, delim = ',', quote = '\"', escape = '\"')",
            [results_file.status, key, *([] if "Subset" in columns else [results_file.subset]), str(chunk)])
        # Rows without a Subset belong to their file's subset.
        con.execute("UPDATE _new SET Subset = ? WHERE Subset IS NULL OR Subset = ''", [results_file.subset])
        con.execute("INSERT INTO _touched SELECT DISTINCT ImageID, Subset FROM _new")
        con.execute("INSERT INTO images BY NAME SELECT * FROM _new")
        added = con.execute("SELECT count(*) FROM _new").fetchone()[0]
        con.execute("DROP TABLE _new")
    con.execute("INSERT OR REPLACE INTO _loaded VALUES (?, ?, ?, ?)", [key, size, mtime_ns, _tail_digest(path, size)])
    return added


def _columns(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [name.strip() for name in next(csv.reader(handle), [])]


def _add_columns(con: Any, table: str, columns: Iterable[str]) -> None:
    """Metadata columns differ between versions: a table grows the ones it lacks."""
    present = {row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()}
    for name in columns:
        if name and name not in present:
            con.execute(f'ALTER TABLE {table} ADD COLUMN "{name.replace(chr(34), "")}" VARCHAR')
            present.add(name)


def _drop_superseded(con: Any) -> None:
    """One row per image and subset: stored beats failed beats pending; a
    duplicated row (a file read again) is kept once. Only the images whose
    rows this update added are looked at."""
    con.execute("""
        DELETE FROM images WHERE rowid IN (
            SELECT rowid FROM (
                SELECT rowid, row_number() OVER (
                    PARTITION BY ImageID, Subset
                    ORDER BY CASE status WHEN 'stored' THEN 0 WHEN 'failed' THEN 1 ELSE 2 END, rowid DESC) AS rank
                FROM images SEMI JOIN _touched USING (ImageID, Subset)) WHERE rank > 1)""")


def _place(con: Any, store: LocalStore, layout: StoreLayout, main: MainOutput) -> None:
    """Where each stored image is (path, or shard and offset) in the main
    output, its bytes and, for files, its width and height (read from the
    headers of the images not placed yet)."""
    unplaced = "FROM images WHERE status = 'stored' AND output IS NULL"
    placed: list[tuple[Any, ...]] = []
    for (subset,) in con.execute(f"SELECT DISTINCT Subset {unplaced}").fetchall():
        if not store.path(join(subset, main.folder)).is_dir():
            continue  # nothing stored in that output (yet)
        image_ids = [image_id for (image_id,) in con.execute(f"SELECT ImageID {unplaced} AND Subset = ?",
                                                             [subset]).fetchall()]
        if store.path(join(subset, main.folder, MANIFEST)).is_file():
            placed += _in_shards(store, subset, main.folder, set(image_ids))
        else:
            # One thread: measured faster than a pool here (the header parse holds the GIL).
            found = (_in_files(store, layout, subset, main, image_id) for image_id in image_ids)
            placed += [one for one in found if one is not None]
    if not placed:
        return
    _register(con, "_placed", placed, [("ImageID", "string"), ("Subset", "string"), ("output", "string"),
                                        ("path", "string"), ("shard", "string"), ("offset", "int64"),
                                        ("width", "int32"), ("height", "int32"), ("bytes", "int64")])
    con.execute("""UPDATE images SET output = p.output, path = p.path, shard = p.shard, "offset" = p."offset",
                   width = p.width, height = p.height, bytes = p.bytes
                   FROM _placed p WHERE images.ImageID = p.ImageID AND images.Subset = p.Subset
                   AND images.status = 'stored'""")
    con.unregister("_placed")


def _register(con: Any, name: str, rows: list[tuple[Any, ...]], columns: list[tuple[str, str]]) -> None:
    """Python rows as a DuckDB view, through Arrow (``executemany`` costs a statement per row)."""
    import pyarrow as pa  # noqa: PLC0415 (a runtime dependency, imported where used)

    values = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    table = pa.table({column: pa.array(list(data), type=getattr(pa, kind)())
                      for (column, kind), data in zip(columns, values, strict=True)})
    con.register(name, table)


def _in_files(store: LocalStore, layout: StoreLayout, subset: str, main: MainOutput,
              image_id: str) -> tuple[Any, ...] | None:
    for ext in dict.fromkeys((main.ext, "png", "jpg", "webp")):
        key = layout.image_key(subset, main.folder, image_id, ext)
        path = store.path(key)
        try:
            size = path.stat().st_size
            with Image.open(path) as image:
                width, height = image.size
        except OSError:
            continue
        return image_id, subset, main.folder, key, None, None, width, height, size
    return None


def _in_shards(store: LocalStore, subset: str, folder: str, wanted: set[str]) -> Iterator[tuple[Any, ...]]:
    base = join(subset, folder)
    for row in read_manifest(store, base):
        for offset, image_id in enumerate(read_index(store, base, row["shard"])):
            if image_id in wanted:
                yield image_id, subset, folder, join(base, row["shard"]), row["shard"], offset, None, None, None


def _load_annotations(con: Any, store: LocalStore, subsets: list[str], counts: DatabaseCounts) -> None:
    """``classes``, ``labels`` and ``boxes``: each subset's files read again
    when they changed (the crawl adds rows to them in place)."""
    sources = {"labels": ANNOTATION_FILES["labels"], "boxes": ANNOTATION_FILES["boxes"], "classes": CLASS_NAMES_FILE}
    for table, name in sources.items():
        for subset in subsets:
            path = store.path(f"{subset}/{name}")
            key = str(path)
            known = con.execute("SELECT size, mtime_ns FROM _loaded WHERE path = ?", [key]).fetchone()
            if not path.is_file():
                continue
            size, mtime_ns = _stamp(path)
            if known is not None and tuple(known) == (size, mtime_ns):
                continue
            counts.files_read += 1
            con.execute(f"DELETE FROM {table} WHERE Subset = ?", [subset])
            if table == "classes":
                _register(con, "_names", [(subset, mid, name, number) for number, (mid, name) in
                                          enumerate(ClassNames.load(path).names.items(), 1)],
                          [("Subset", "string"), ("LabelName", "string"), ("DisplayName", "string"),
                           ("ClassIndex", "int32")])
                con.execute("CREATE OR REPLACE TEMP TABLE _new AS SELECT * FROM _names")
                con.unregister("_names")
            else:
                con.execute("CREATE OR REPLACE TEMP TABLE _new AS SELECT ? AS Subset, * FROM "
                            "read_csv(?, header = true, auto_detect = true)", [subset, key])
            present = {row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()}
            for column, kind, *_ in con.execute("DESCRIBE _new").fetchall():
                if column not in present:
                    con.execute(f'ALTER TABLE {table} ADD COLUMN "{column}" {kind}')
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _new")
            con.execute("DROP TABLE _new")
            con.execute("INSERT OR REPLACE INTO _loaded VALUES (?, ?, ?, NULL)", [key, size, mtime_ns])
