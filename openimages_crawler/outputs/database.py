"""The store as a DuckDB database: ``images`` (every recorded or pending row
with its status and where it is stored), ``classes``, and a table per kind
of annotation: ``labels``, ``boxes``, ``masks``, ``points``,
``relationships``, ``narratives``.

Built from the files the crawl already keeps (results CSVs, pending lists,
annotation files, class descriptions, pack indexes) and updated
incrementally: a results file that only grew since the last update has just
its new rows read; one that was rewritten (a merge that reconciled failures)
is read again; unchanged files are not read at all. Written in a staging
copy and renamed, so a kill leaves the previous database whole. A name
read from a file is always quoted (or mapped, ``_column_names``) and a value
always a parameter: no file's text is ever read as SQL. No Scrapy import;
``duckdb`` is imported only here.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import os
import shutil
import tempfile
import textwrap
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from openimages_crawler.dataset.annotations import ClassNames
from openimages_crawler.dataset.catalogue import ANNOTATION_KINDS, CLASS_NAMES_FILE, FAILURE_COLUMNS
from openimages_crawler.dataset.rows import MetadataError
from openimages_crawler.outputs.containers import is_container, join, read_index, read_manifest
from openimages_crawler.store.layout import PENDING_DIR, StoreLayout
from openimages_crawler.store.local import LocalStore, host_tag
from openimages_crawler.store.lock import pid_alive

logger = logging.getLogger(__name__)

_TAIL_CHECK = 4096  # bytes before the last read end that must be unchanged for an append-only read
MEMORY_LIMIT = "2GB"  # DuckDB spills to disk beyond it: an update fits beside a running crawl
# A file's column named like one the database fills itself is carried under this prefix (Status -> extra_Status).
EXTRA_PREFIX = "extra_"
# The images columns the database fills itself (FailureReason and FailureDetails only a failure file gives).
IMAGES_OWN_COLUMNS = ("status", "output", "path", "shard", "offset", "width", "height", "bytes", "_source")
ANNOTATIONS_OWN_COLUMNS = ("Subset",)  # annotation tables: the file's subset folder
# The narratives' members, typed here (no line's content chooses a column or a type).
NARRATIVE_COLUMNS = {"dataset_id": "VARCHAR", "image_id": "VARCHAR", "annotator_id": "BIGINT", "caption": "VARCHAR",
                     "timed_caption": "JSON", "traces": "JSON", "voice_recording": "VARCHAR"}
_NARRATIVE_COLUMNS_SQL = ", ".join(f"{name} {kind}" for name, kind in NARRATIVE_COLUMNS.items())
# How the store's CSV files are written; fixed, so that no header steers how DuckDB splits them.
CSV_DIALECT = "delim = ',', quote = '\"', escape = '\"'"


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
    remove_dead_copies(database)
    staging = database.with_name(f".{database.name}.{host_tag()}-{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)
    if database.is_file():
        shutil.copyfile(database, staging)
    try:
        with duckdb.connect(str(staging), config={"memory_limit": MEMORY_LIMIT}) as con:
            _schema(con)
            con.execute("CREATE TEMP TABLE _touched (ImageID VARCHAR, Subset VARCHAR)")
            for results_file in results:
                with _left_out_if_unreadable(results_file.path):
                    counts.rows_added += _load_results(con, results_file, counts)
            _drop_superseded(con)
            _place(con, store, layout, main)
            _load_annotations(con, store, sorted({r.subset for r in results} - {""}), counts)  # "": pending lists
            counts.images = con.execute("SELECT count(*) FROM images").fetchone()[0]
            con.execute("CHECKPOINT")
        os.replace(staging, database)
    finally:
        staging.unlink(missing_ok=True)
        staging.with_name(staging.name + ".wal").unlink(missing_ok=True)
    return counts


def remove_dead_copies(database: Path) -> list[Path]:
    """Delete the staging copies (and their WAL) that killed updates of this
    host left beside ``database``; another host's are its own to clean."""
    prefix = f".{database.name}.{host_tag()}-"
    removed = []
    for path in database.parent.glob(f"{glob.escape(prefix)}*.tmp*"):
        pid = path.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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
    con.execute("CREATE TABLE IF NOT EXISTS masks (Subset VARCHAR, MaskPath VARCHAR, ImageID VARCHAR, "
                "LabelName VARCHAR, BoxID VARCHAR, BoxXMin DOUBLE, BoxXMax DOUBLE, BoxYMin DOUBLE, BoxYMax DOUBLE, "
                "PredictedIoU DOUBLE, Clicks VARCHAR)")
    con.execute("CREATE TABLE IF NOT EXISTS points (Subset VARCHAR, ImageId VARCHAR, X DOUBLE, Y DOUBLE, "
                "Label VARCHAR, EstimatedYesNo VARCHAR, Source VARCHAR, YesVotes INTEGER, NoVotes INTEGER, "
                "UnsureVotes INTEGER, TextLabel VARCHAR)")
    con.execute("CREATE TABLE IF NOT EXISTS relationships (Subset VARCHAR, ImageID VARCHAR, LabelName1 VARCHAR, "
                "LabelName2 VARCHAR, XMin1 DOUBLE, XMax1 DOUBLE, YMin1 DOUBLE, YMax1 DOUBLE, XMin2 DOUBLE, "
                "XMax2 DOUBLE, YMin2 DOUBLE, YMax2 DOUBLE, RelationshipLabel VARCHAR)")
    con.execute(f"CREATE TABLE IF NOT EXISTS narratives (Subset VARCHAR, {_NARRATIVE_COLUMNS_SQL})")


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
    header = _header(path)
    added = _read_results(con, results_file, header, start) if header.names else 0  # no names: an empty file
    con.execute("INSERT OR REPLACE INTO _loaded VALUES (?, ?, ?, ?)", [key, size, mtime_ns, _tail_digest(path, size)])
    return added


def _images_own_columns(status: str) -> tuple[str, ...]:
    """The images columns a results file of ``status`` cannot set: its own
    FailureReason and FailureDetails are metadata unless it lists failures."""
    return IMAGES_OWN_COLUMNS if status == "failed" else (*IMAGES_OWN_COLUMNS, *FAILURE_COLUMNS)


def _read_results(con: Any, results_file: ResultsFile, header: _Header, start: int) -> int:
    """The rows of ``results_file`` from byte ``start`` on (all of them from 0)
    added to ``images``; the number added."""
    names = _column_names(header.names, _images_own_columns(results_file.status))
    has_subset = "subset" in {name.casefold() for name in names}
    with tempfile.TemporaryDirectory() as folder:
        chunk = Path(folder) / "rows.csv"
        with open(results_file.path, "rb") as source, open(chunk, "wb") as out:
            out.write(source.read(header.size))
            source.seek(max(start, header.size))
            shutil.copyfileobj(source, out)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _new AS SELECT {_select_list(names)}, ? AS status, ? AS _source"
            f"{'' if has_subset else ', ? AS Subset'} "
            f"FROM read_csv(?, header = true, names = ?, new_line = ?, all_varchar = true, {CSV_DIALECT})",
            [results_file.status, str(results_file.path), *([] if has_subset else [results_file.subset]),
             str(chunk), names, header.line_end])
    # Rows without a Subset belong to their file's subset.
    con.execute("UPDATE _new SET Subset = ? WHERE Subset IS NULL OR Subset = ''", [results_file.subset])
    con.execute("INSERT INTO _touched SELECT DISTINCT ImageID, Subset FROM _new")
    _add_columns(con, "images")
    con.execute("INSERT INTO images BY NAME SELECT * FROM _new")
    added: int = con.execute("SELECT count(*) FROM _new").fetchone()[0]
    con.execute("DROP TABLE _new")
    return added


@dataclass(frozen=True, slots=True)
class _Header:
    """A CSV file's first record: its names as written (bytes that are not
    UTF-8 replaced), its size in bytes, and its line ending, which DuckDB is
    told (its sniffer fails on a first record that holds a line break)."""

    names: list[str]
    size: int
    line_end: str  # as read_csv's new_line spells it


def _header(path: Path) -> _Header:
    with open(path, "rb") as handle:
        names = next(csv.reader(line.decode("utf-8-sig", "replace") for line in handle), [])
        size = handle.tell()  # the csv reader pulls no line beyond its first record
        handle.seek(max(size - 2, 0))
        crlf = handle.read(2) == b"\r\n"
    return _Header(names, size, "\\r\\n" if crlf else "\\n")


def _column_names(header: Iterable[str], own: Iterable[str]) -> list[str]:
    """The names a file's columns take in the database: as written (stripped),
    except that an empty one becomes ``column{N}`` (its position), one named
    like a column the database fills itself (``own``) takes EXTRA_PREFIX, and
    a repeat takes ``_2``, ``_3``... Compared case-insensitively, as DuckDB
    does; never pasted into SQL unquoted (``_quoted``)."""
    own_names = {name.casefold() for name in own}
    taken = set(own_names)
    names = []
    for position, written in enumerate(header, 1):
        name = written.strip() or f"column{position}"
        if name.casefold() in own_names:
            name = EXTRA_PREFIX + name
        unique, copy = name, 1
        while unique.casefold() in taken:
            copy += 1
            unique = f"{name}_{copy}"
        taken.add(unique.casefold())
        names.append(unique)
    return names


def _quoted(name: str) -> str:
    """``name`` as a DuckDB identifier: in double quotes, its own doubled, so that it is never read as SQL."""
    return '"' + name.replace('"', '""') + '"'


def _select_list(names: Iterable[str]) -> str:
    return ", ".join(_quoted(name) for name in names)


def _add_columns(con: Any, table: str) -> None:
    """Metadata and annotation columns differ between versions: ``table`` grows
    the columns of ``_new`` it lacks, with the types DuckDB gave them."""
    present = {column.casefold() for column, *_ in con.execute(f"DESCRIBE {table}").fetchall()}
    for column, kind, *_ in con.execute("DESCRIBE _new").fetchall():
        if column.casefold() not in present:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {_quoted(column)} {kind}")


@contextmanager
def _left_out_if_unreadable(path: Path) -> Iterator[None]:
    """A file that DuckDB cannot read (broken quoting, bytes that are not
    UTF-8, a value not of its column's type, no ImageID) is left out with a
    warning and tried again at the next update: no file fails the database."""
    import duckdb  # noqa: PLC0415 (only the database needs it)

    try:
        yield
    except (csv.Error, MetadataError, duckdb.InvalidInputException, duckdb.ConversionException,
            duckdb.BinderException) as exc:
        logger.warning("%s is left out of the database until it can be read: %s", path,
                       textwrap.shorten(str(exc), 300))


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
    """Where each stored image is in the main output (its path, or its pack
    and offset: columns ``shard`` and ``offset``), its bytes and, for files,
    its width and height (read from the headers of the images not placed yet)."""
    unplaced = "FROM images WHERE status = 'stored' AND output IS NULL"
    placed: list[tuple[Any, ...]] = []
    for (subset,) in con.execute(f"SELECT DISTINCT Subset {unplaced}").fetchall():
        if not store.path(join(subset, main.folder)).is_dir():
            continue  # nothing stored in that output (yet)
        image_ids = [image_id for (image_id,) in con.execute(f"SELECT ImageID {unplaced} AND Subset = ?",
                                                             [subset]).fetchall()]
        if is_container(store, subset, main.folder):
            placed += _in_packs(store, subset, main.folder, set(image_ids))
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


def _in_packs(store: LocalStore, subset: str, folder: str, wanted: set[str]) -> Iterator[tuple[Any, ...]]:
    base = join(subset, folder)
    for row in read_manifest(store, base):
        for offset, image_id in enumerate(read_index(store, base, row["shard"])):
            if image_id in wanted:
                yield image_id, subset, folder, join(base, row["shard"]), row["shard"], offset, None, None, None


def _load_annotations(con: Any, store: LocalStore, subsets: list[str], counts: DatabaseCounts) -> None:
    """``classes`` and the table of each kind of annotation: each subset's
    files read again when they changed (the crawl adds rows to them in place)."""
    sources = {**{name: kind.file for name, kind in ANNOTATION_KINDS.items()}, "classes": CLASS_NAMES_FILE}
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
            with _left_out_if_unreadable(path):
                con.execute(f"DELETE FROM {table} WHERE Subset = ?", [subset])
                if _read_annotations(con, table, subset, path):
                    _add_columns(con, table)
                    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _new")
                    con.execute("DROP TABLE _new")
                con.execute("INSERT OR REPLACE INTO _loaded VALUES (?, ?, ?, NULL)", [key, size, mtime_ns])


def _read_annotations(con: Any, table: str, subset: str, path: Path) -> bool:
    """One subset's file of ``table`` as the temp table ``_new``; False when it
    has no columns (an empty file)."""
    if table == "classes":
        _register(con, "_names", [(subset, mid, name, number) for number, (mid, name) in
                                  enumerate(ClassNames.load(path).names.items(), 1)],
                  [("Subset", "string"), ("LabelName", "string"), ("DisplayName", "string"), ("ClassIndex", "int32")])
        con.execute("CREATE OR REPLACE TEMP TABLE _new AS SELECT * FROM _names")
        con.unregister("_names")
        return True
    if ANNOTATION_KINDS.get(table) is not None and ANNOTATION_KINDS[table].json_lines:
        con.execute("CREATE OR REPLACE TEMP TABLE _new AS SELECT ? AS Subset, * FROM "
                    "read_json(?, format = 'newline_delimited', columns = ?, ignore_errors = true)", [subset, str(path), NARRATIVE_COLUMNS])
        return True
    header = _header(path)
    if header.names:
        names = _column_names(header.names, ANNOTATIONS_OWN_COLUMNS)
        con.execute(f"CREATE OR REPLACE TEMP TABLE _new AS SELECT ? AS Subset, {_select_list(names)} FROM "
                    f"read_csv(?, header = true, names = ?, new_line = ?, auto_detect = true, {CSV_DIALECT})",
                    [subset, str(path), names, header.line_end])
    return bool(header.names)
