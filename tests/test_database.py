"""The store's DuckDB database (``outputs.database``): built from a store's
files, updated incrementally, and answering the README's queries."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from PIL import Image

from openimages_crawler.outputs.containers import write_index, write_manifest
from openimages_crawler.outputs.database import (
    MainOutput,
    ResultsFile,
    pending_files,
    update_database,
    write_pending,
)
from openimages_crawler.store.layout import ROOT_PATTERN, StoreLayout
from openimages_crawler.store.local import LocalStore, host_tag
from tests.conftest import ROOT

LAYOUT = StoreLayout()
HEADER = ["ImageID", "Subset", "OriginalURL", "License", "Title"]
CLASSES = '/m/01g317,Person\r\n/m/0k4j,"Car"\n/m/0ccs93,"Ducks, geese"\n'
BOXES = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax\n"
         "00000000000000a1,freeform,/m/01g317,1,0.1,0.5,0.2,0.6\n"
         "00000000000000a1,freeform,/m/0k4j,1,0.5,0.9,0.2,0.6\n"
         "00000000000000a2,freeform,/m/01g317,1,0.0,1.0,0.0,1.0\n"
         "00000000000000a3,freeform,/m/0k4j,1,0.2,0.3,0.2,0.3\n")
LABELS = "ImageID,Source,LabelName,Confidence\n00000000000000a1,verification,/m/01g317,1\n"


def readme_queries() -> list[str]:
    """The SQL blocks of README's database section, as a user would paste them."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The database", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def row(image_id: str, host: str = "a.example", **extra: str) -> dict[str, str]:
    return {"ImageID": image_id, "Subset": "train", "OriginalURL": f"https://{host}/{image_id}.jpg",
            "License": "https://creativecommons.org/licenses/by/2.0/", "Title": 'A "quoted",\nmulti-line title',
            **extra}


def write_rows(path: Path, rows: list[dict[str, str]], columns: list[str], append: bool = False,
               line_end: str = "\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a" if append else "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator=line_end)
        if not append:
            writer.writeheader()
        writer.writerows(rows)


def jpeg(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "red").save(out, "JPEG")
    return out.getvalue()


def make_store(root: Path) -> tuple[LocalStore, list[ResultsFile]]:
    store = LocalStore(str(root))
    train = root / "train"
    write_rows(train / "images-success.csv", [row("00000000000000a1"), row("00000000000000a2", "b.example")], HEADER)
    failure_columns = [*HEADER, "FailureReason", "FailureDetails"]
    write_rows(train / "images-failure.csv", [row("00000000000000a3", "b.example", FailureReason="unavailable",
                                                  FailureDetails="302 to photo_unavailable.png"),
                                              row("00000000000000a4", "b.example", FailureReason="http_error",
                                                  FailureDetails="HTTP 500")], failure_columns)
    for image_id, size in (("00000000000000a1", (40, 30)), ("00000000000000a2", (20, 30))):
        path = store.path(LAYOUT.image_key("train", "fit", image_id, "jpg"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(size))
    (train / "annotations-bbox.csv").write_text(BOXES)
    (train / "annotations-labels.csv").write_text(LABELS)
    (train / "class-descriptions.csv").write_text(CLASSES)
    write_pending(root, "1of1", HEADER, [(row("00000000000000a5"), "train"), (row("00000000000000a1"), "train")])
    results = [ResultsFile(train / "images-success.csv", "train", "stored"),
               ResultsFile(train / "images-failure.csv", "train", "failed"), *pending_files(root)]
    return store, results


def query(database: Path, sql: str, *params: object) -> list[tuple]:
    with duckdb.connect(str(database), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_the_database_holds_every_row_once_with_where_it_is(tmp_path: Path) -> None:
    store, results = make_store(tmp_path)
    database = tmp_path / "openimages.duckdb"
    counts = update_database(database, store, LAYOUT, results, MainOutput("fit", "jpg"))
    assert counts.images == 5 and counts.rows_added == 6  # a1 is stored, not also pending
    images = {r[0]: r[1:] for r in query(database, "SELECT ImageID, status, FailureReason, path, width, height, "
                                                   "bytes, Title FROM images")}
    assert {image_id: values[0] for image_id, values in images.items()} == {
        "00000000000000a1": "stored", "00000000000000a2": "stored", "00000000000000a3": "failed",
        "00000000000000a4": "failed", "00000000000000a5": "pending"}
    a1 = images["00000000000000a1"]
    assert a1[2:5] == ("train/fit/000/00000000000000a1.jpg", 40, 30)
    assert a1[5] == (tmp_path / a1[2]).stat().st_size and a1[6] == 'A "quoted",\nmulti-line title'
    assert images["00000000000000a3"][1] == "unavailable"
    assert query(database, "SELECT LabelName, DisplayName, ClassIndex FROM classes ORDER BY ClassIndex") == [
        ("/m/01g317", "Person", 1), ("/m/0k4j", "Car", 2), ("/m/0ccs93", "Ducks, geese", 3)]
    assert query(database, "SELECT typeof(XMin), count(*) FROM boxes GROUP BY 1") == [("DOUBLE", 4)]
    assert query(database, "SELECT count(*) FROM labels") == [(1,)]

    person_and_car, by_host, per_class = (query(database, sql) for sql in readme_queries())
    assert person_and_car == [("00000000000000a1", "train/fit/000/00000000000000a1.jpg")]
    assert sorted(by_host) == [("b.example", "http_error", 1), ("b.example", "unavailable", 1)]
    assert per_class == [("Person", 2, 2), ("Car", 1, 1)]  # a3's Car box: a3 is not stored


def test_updates_read_only_what_changed(tmp_path: Path) -> None:
    store, results = make_store(tmp_path)
    database = tmp_path / "openimages.duckdb"
    update_database(database, store, LAYOUT, results, MainOutput("fit", "jpg"))
    again = update_database(database, store, LAYOUT, results, MainOutput("fit", "jpg"))
    assert (again.files_read, again.rows_added, again.images) == (0, 0, 5)
    # Rows appended (a merge): only those are read; the pending row that got a result is no longer pending.
    write_rows(tmp_path / "train" / "images-success.csv", [row("00000000000000a5"), row("00000000000000a6")],
               HEADER, append=True)
    write_pending(tmp_path, "1of1", HEADER, [])  # the run finished: nothing pending
    grown = update_database(database, store, LAYOUT, results, MainOutput("fit", "jpg"))
    assert grown.rows_added == 2 and grown.files_read == 1
    assert query(database, "SELECT status, count(*) FROM images GROUP BY 1 ORDER BY 1") == [
        ("failed", 2), ("stored", 4)]
    # A rewritten file (a retry's reconcile took a3 out of the failures): read again whole.
    write_rows(tmp_path / "train" / "images-failure.csv", [row("00000000000000a4", FailureReason="http_error",
                                                               FailureDetails="HTTP 500")],
               [*HEADER, "FailureReason", "FailureDetails"])
    update_database(database, store, LAYOUT, results, MainOutput("fit", "jpg"))
    assert query(database, "SELECT ImageID FROM images WHERE status = 'failed'") == [("00000000000000a4",)]
    # A changed annotation file is read again; staging leaves nothing behind.
    (tmp_path / "train" / "annotations-bbox.csv").write_text(BOXES.rsplit("\n", 2)[0] + "\n")
    update_database(database, store, LAYOUT, results, MainOutput("fit", "jpg"))
    assert query(database, "SELECT count(*) FROM boxes") == [(3,)]
    assert sorted(path.name for path in tmp_path.iterdir() if "duckdb" in path.name) == ["openimages.duckdb"]


def test_images_in_packs_have_their_shard_and_offset(tmp_path: Path) -> None:
    store, results = make_store(tmp_path)
    store.open()
    base = "train/crop"
    write_index(store, base, "000000.tar", ("00000000000000a9", "00000000000000a2"))
    write_index(store, base, "000001.tar", ("00000000000000a1",))
    (tmp_path / base / "000000.tar").write_bytes(b"x")
    (tmp_path / base / "000001.tar").write_bytes(b"y")
    write_manifest(store, base, [
        {"shard": "000000.tar", "count": "2", "bytes": "1", "first_image_id": "a9", "last_image_id": "a2",
         "sha256": ""},
        {"shard": "000001.tar", "count": "1", "bytes": "1", "first_image_id": "a1", "last_image_id": "a1",
         "sha256": ""}])
    database = tmp_path / "openimages.duckdb"
    update_database(database, store, LAYOUT, results, MainOutput("crop", "jpg"))
    store.close()
    assert sorted(query(database, "SELECT ImageID, shard, \"offset\", path FROM images WHERE status = 'stored'")) == [
        ("00000000000000a1", "000001.tar", 0, "train/crop/000001.tar"),
        ("00000000000000a2", "000000.tar", 1, "train/crop/000000.tar")]


@pytest.mark.parametrize("broken", ["a database file that is not one"])
def test_a_broken_database_is_an_error_and_the_file_is_kept(tmp_path: Path, broken: str) -> None:
    store, results = make_store(tmp_path)
    database = tmp_path / "openimages.duckdb"
    database.write_text(broken)
    with pytest.raises(duckdb.Error):
        update_database(database, store, LAYOUT, results, MainOutput("fit", "jpg"))
    assert database.read_text() == broken
    assert sorted(path.name for path in tmp_path.iterdir() if "duckdb" in path.name) == ["openimages.duckdb"]


def injection(target: Path) -> str:
    """A column name that, pasted into SQL, writes ``target``."""
    return f"x\" VARCHAR; COPY (SELECT 'pwned') TO '{target}' (HEADER false); --"


def add_column(path: Path, name: str, value: str) -> None:
    """``path``'s CSV with one more column, ``value`` in every row (quoted and ended as the crawl's exporter does)."""
    with open(path, newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    with open(path, "w", newline="", encoding="utf-8") as out:
        csv.writer(out, lineterminator="\r\n").writerows([[*header, name], *([*fields, value] for fields in rows)])


def sql_name(name: str) -> str:
    """``name`` quoted for a query of the test's own."""
    return '"' + name.replace('"', '""') + '"'


def columns_of(database: Path, table: str) -> list[str]:
    return [name for (name,) in query(database, "SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
                                                "ORDER BY column_index", table)]


@pytest.mark.parametrize("file, table", [("annotations-bbox.csv", "boxes"), ("images-success.csv", "images")])
def test_a_header_holding_sql_is_a_column_name_and_never_runs(tmp_path: Path, file: str, table: str) -> None:
    store, results = make_store(tmp_path)
    target = tmp_path / "pwned"
    path = tmp_path / "train" / file
    if table == "boxes":  # as a metadata mirror serves it: unquoted, copied into the store as it is
        header, *rows = path.read_text().splitlines()
        path.write_text("\n".join([f"{header},{injection(target)}", *(f"{line},7" for line in rows)]) + "\n")
    else:
        add_column(path, injection(target), "7")
    database = tmp_path / "openimages.duckdb"
    update_database(database, store, LAYOUT, results, MainOutput("fit", "jpg"))
    assert not target.exists()
    assert columns_of(database, table)[-1] == injection(target)
    assert query(database, f"SELECT DISTINCT {sql_name(injection(target))}::VARCHAR FROM {table} "
                           "WHERE Subset = 'train' AND ImageID = '00000000000000a1'") == [("7",)]


def test_columns_named_like_the_databases_own_are_carried_under_the_prefix(tmp_path: Path) -> None:
    store, results = make_store(tmp_path)
    success = tmp_path / "train" / "images-success.csv"
    for name in ("status", "extra_status", "Status", "_source", 'a "quoted" name', "", "title", "FailureReason"):
        add_column(success, name, f"value of {name}")
    (tmp_path / "train" / "annotations-labels.csv").write_text("Subset,ImageID,Source,LabelName,Confidence\n"
                                                             "validation,00000000000000a1,human,/m/01g317,1\n")
    database = tmp_path / "openimages.duckdb"
    update_database(database, store, LAYOUT, results, MainOutput("fit", "jpg"))
    carried = ["extra_status", "extra_status_2", "extra_Status_3", "extra__source", 'a "quoted" name', "column11",
               "title_2", "extra_FailureReason"]
    assert columns_of(database, "images")[-len(carried):] == carried
    select = ", ".join(sql_name(name) for name in carried)
    assert query(database, f"SELECT status, FailureReason, {select} FROM images WHERE ImageID = '00000000000000a1'"
                 ) == [("stored", None, "value of status", "value of extra_status", "value of Status",
                        "value of _source", 'value of a "quoted" name', "value of ", "value of title",
                        "value of FailureReason")]
    assert query(database, "SELECT status, count(*) FROM images GROUP BY 1 ORDER BY 1") == [
        ("failed", 2), ("pending", 1), ("stored", 2)]
    assert query(database, "SELECT Subset, extra_Subset, ImageID FROM labels") == [
        ("train", "validation", "00000000000000a1")]


def test_a_file_duckdb_cannot_read_is_left_out_with_a_warning(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    store, results = make_store(tmp_path)
    boxes = tmp_path / "train" / "annotations-bbox.csv"
    boxes.write_text(BOXES.replace("Source,", '"Source"s,', 1))  # quoting DuckDB refuses
    database = tmp_path / "openimages.duckdb"
    counts = update_database(database, store, LAYOUT, results, MainOutput("fit", "jpg"))
    assert counts.images == 5 and query(database, "SELECT count(*) FROM labels") == [(1,)]
    assert query(database, "SELECT count(*) FROM boxes") == [(0,)]
    assert f"{boxes} is left out of the database until it can be read" in caplog.text
    boxes.write_text(BOXES)  # mended: read at the next update
    update_database(database, store, LAYOUT, results, MainOutput("fit", "jpg"))
    assert query(database, "SELECT count(*) FROM boxes") == [(4,)]


def test_rows_appended_below_a_header_of_several_lines_are_read(tmp_path: Path) -> None:
    store, results = make_store(tmp_path)
    success = tmp_path / "train" / "images-success.csv"
    add_column(success, "two\nlines", "before")  # a quoted line break in a metadata column's name
    database = tmp_path / "openimages.duckdb"
    update_database(database, store, LAYOUT, results, MainOutput("fit", "jpg"))
    # A record holding a line break first (the title), ended as the exporter ends it.
    write_rows(success, [row("00000000000000a6", **{"two\nlines": "after"})], [*HEADER, "two\nlines"], append=True,
               line_end="\r\n")
    assert update_database(database, store, LAYOUT, results, MainOutput("fit", "jpg")).rows_added == 1
    assert query(database, "SELECT ImageID, \"two\nlines\" FROM images WHERE status = 'stored' ORDER BY 1") == [
        ("00000000000000a1", "before"), ("00000000000000a2", "before"), ("00000000000000a6", "after")]


def test_an_update_removes_the_copies_killed_updates_of_this_host_left(tmp_path: Path) -> None:
    store, results = make_store(tmp_path)
    database = tmp_path / "openimages.duckdb"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead = [database.with_name(f".openimages.duckdb.{host_tag()}-{finished.stdout.strip()}.tmp{end}")
            for end in ("", ".wal")]
    alive = database.with_name(f".openimages.duckdb.{host_tag()}-{os.getppid()}.tmp")  # an update under way
    elsewhere = database.with_name(f".openimages.duckdb.other_host-{finished.stdout.strip()}.tmp")
    for path in (*dead, alive, elsewhere):
        path.write_bytes(b"a copy")
    update_database(database, store, LAYOUT, results, MainOutput("fit", "jpg"))
    assert not [path for path in dead if path.exists()]
    assert alive.exists() and elsewhere.exists()  # a running update's, another host's to clean
    assert ROOT_PATTERN.fullmatch(alive.name) and ROOT_PATTERN.fullmatch(dead[1].name)  # the layout's own names
