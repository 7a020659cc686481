"""Row reading and validation: real V3 metadata and hostile rows."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from openimages_crawler.dataset.catalogue import IMAGES_CSV_COLUMNS
from openimages_crawler.dataset.rows import (
    ImageRow,
    InvalidRow,
    MetadataError,
    iter_rows,
    read_header,
    validate_row,
)
from openimages_crawler.store.layout import ROOT_NAMES

V3_SAMPLE = Path(__file__).parent / "data" / "v3-validation-images-200.csv"
MAX_ROW_BYTES = 1 << 20
GOOD = {
    "ImageID": "000060e3121c7305",
    "Subset": "train",
    "OriginalURL": "https://c1.staticflickr.com/1/2/3_o.jpg",
    "OriginalSize": "141489",
    "OriginalMD5": "XKWUMkcNib71Ge6Yq1/0/g==",
}


def test_real_v3_rows_all_validate() -> None:
    header = read_header(V3_SAMPLE)
    assert header == list(IMAGES_CSV_COLUMNS)
    rows = [validate_row(fields, problem, None) for fields, problem in iter_rows(V3_SAMPLE, header, MAX_ROW_BYTES)]
    assert len(rows) == 200
    assert all(isinstance(row, ImageRow) for row in rows)
    first = rows[0]
    assert isinstance(first, ImageRow) and first.subset == "validation"
    assert len(first.md5) == 16 and first.size > 0


def test_gzip_and_bom_are_read(tmp_path: Path) -> None:
    text = "\ufeff" + V3_SAMPLE.read_text(encoding="utf-8")
    path = tmp_path / "images.csv.gz"
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    header = read_header(path)
    assert header[0] == "ImageID"
    assert sum(1 for _ in iter_rows(path, header, MAX_ROW_BYTES)) == 200


def test_quoted_newlines_and_short_rows(tmp_path: Path) -> None:
    path = tmp_path / "images.csv"
    path.write_text(
        "ImageID,Subset,OriginalURL,OriginalSize,OriginalMD5,Title\n"
        'a1,train,http://h/a.jpg,1,XKWUMkcNib71Ge6Yq1/0/g==,"two\nlines, ""quoted"""\n'
        "a2,train,http://h/b.jpg\n"
    )
    header = read_header(path)
    (first, problem1), (second, problem2) = list(iter_rows(path, header, MAX_ROW_BYTES))
    assert problem1 is None and first["Title"] == 'two\nlines, "quoted"'
    assert problem2 == "row has 3 fields, the header has 6"
    assert second["OriginalMD5"] == ""
    assert isinstance(validate_row(second, problem2, None), InvalidRow)


def test_missing_columns_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "images.csv"
    path.write_text("ImageID,OriginalURL\n")
    with pytest.raises(MetadataError, match="missing column.*OriginalSize, OriginalMD5"):
        read_header(path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(MetadataError, match="empty"):
        read_header(empty)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ImageID", "../../etc/passwd", "ImageID"),
        ("ImageID", "", "ImageID"),
        ("ImageID", "a/b", "ImageID"),
        ("ImageID", "-rf", "ImageID"),
        ("Subset", "..", "Subset"),
        ("Subset", "a/b", "Subset"),
        ("OriginalURL", "ftp://h/a.jpg", "http or https"),
        ("OriginalURL", "file:///etc/passwd", "http or https"),
        ("OriginalURL", "javascript:alert(1)", "http or https"),
        ("OriginalURL", "http:///nohost.jpg", "http or https"),
        ("OriginalSize", "12kb", "not an integer"),
        ("OriginalSize", "-5", "not an integer"),
        ("OriginalSize", "", "not an integer"),
        ("OriginalSize", "١٢", "not an integer"),
        ("OriginalMD5", "not-base64!", "16-byte"),
        ("OriginalMD5", "AAAA", "16-byte"),
        ("OriginalMD5", "", "16-byte"),
        ("Rotation", "45", "not 0, 90, 180 or 270"),
        ("Rotation", "left", "not 0, 90, 180 or 270"),
    ],
)
def test_hostile_values_become_invalid_rows(field: str, value: str, message: str) -> None:
    fields = {**GOOD, field: value}
    result = validate_row(fields, None, None)
    assert isinstance(result, InvalidRow)
    assert message in result.details
    assert result.subset in ("train", "unknown")


def test_subset_defaults() -> None:
    row = validate_row({**GOOD, "Subset": ""}, None, "validation")
    assert isinstance(row, ImageRow) and row.subset == "validation"
    row = validate_row({**GOOD, "Subset": ""}, None, None)
    assert isinstance(row, ImageRow) and row.subset == "unknown"
    row = validate_row(GOOD, None, None)
    assert isinstance(row, ImageRow) and row.md5.hex() == "5ca59432470d89bef519ee98ab5ff4fe"


@pytest.mark.parametrize(("text", "rotation"), [("", 0), ("nan", 0), ("0", 0), ("90.0", 90),
                                                 ("180", 180), (" 270.0 ", 270)])
def test_rotation_values(text: str, rotation: int) -> None:
    row = validate_row({**GOOD, "Rotation": text}, None, None)
    assert isinstance(row, ImageRow) and row.rotation == rotation


@pytest.mark.parametrize("subset", ["metadata", "report.html", "REPORT.JSON", ".lock", ".tmp", "..",
                                    "openimages.duckdb", "openimages.duckdb.wal", "mine.DuckDB", "shard-2of4",
                                    *sorted(ROOT_NAMES)])
def test_a_subset_named_like_the_stores_own_files_is_an_invalid_row(subset: str) -> None:
    row = validate_row({**GOOD, "Subset": subset}, None, "validation")
    assert isinstance(row, InvalidRow) and row.subset == "validation"
    assert "is not a safe folder name" in row.details


def test_the_subset_argument_cannot_name_the_stores_own_files(tmp_path: Path) -> None:
    from openimages_crawler.job.arguments import ArgumentError, CrawlArguments

    metadata = tmp_path / "images.csv"
    metadata.write_text(",".join(IMAGES_CSV_COLUMNS) + "\n")
    with pytest.raises(ArgumentError, match="is not a plain subset name"):
        CrawlArguments.parse(metadata=str(metadata), subset="metadata")
    assert CrawlArguments.parse(metadata=str(metadata), subset="metadata-2").subset == "metadata-2"
    with pytest.raises(ArgumentError, match="is not a plain subset name"):
        CrawlArguments.parse(metadata=str(metadata), subset="openimages.duckdb")


def hostile_file(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "hostile.csv"
    path.write_text("ImageID,Subset,OriginalURL,OriginalSize,OriginalMD5,Title\n" + "".join(rows))
    return path


def row_text(image_id: str, title: str) -> str:
    return f"{image_id},train,http://x/{image_id}.jpg,1,XKWUMkcNib71Ge6Yq1/0/g==,{title}\n"


def test_an_over_long_row_is_one_invalid_row_that_keeps_its_image_id(tmp_path: Path) -> None:
    path = hostile_file(tmp_path, [row_text("a1", "ok"), row_text("a2", "L" * 5000), row_text("a3", "ok")])
    found = list(iter_rows(path, read_header(path), 1000))
    assert [(fields["ImageID"], problem) for fields, problem in found] == [
        ("a1", None), ("a2", "row longer than 1000 bytes"), ("a3", None)]
    assert len(found[1][0]["Title"]) < 1000  # the failure row does not carry the long field


def test_an_unclosed_quote_costs_one_row_and_reading_resumes_at_the_next_line(tmp_path: Path) -> None:
    rows = [row_text("a1", "ok"), row_text("a2", '"never closed'), *[row_text(f"b{i}", "ok") for i in range(40)],
            row_text("a3", '"two\nlines"')]
    path = hostile_file(tmp_path, rows)
    found = list(iter_rows(path, read_header(path), 1000))
    assert found[1] == ({"ImageID": "a2", "Subset": "train", "OriginalURL": "http://x/a2.jpg", "OriginalSize": "1",
                         "OriginalMD5": "XKWUMkcNib71Ge6Yq1/0/g==", "Title": ""},
                        "a quoted field is still open after 1000 bytes")
    assert [fields["ImageID"] for fields, _ in found] == ["a1", "a2", *[f"b{i}" for i in range(40)], "a3"]
    assert found[-1] == (found[-1][0], None) and found[-1][0]["Title"] == "two\nlines"


def test_a_truncated_gz_gives_its_rows_then_names_the_file_and_the_line(tmp_path: Path) -> None:
    plain = hostile_file(tmp_path, [row_text(f"{i:016x}", "ok") for i in range(3000)])
    data = gzip.compress(plain.read_bytes())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(data[: len(data) // 2])
    rows = []
    with pytest.raises(MetadataError, match=r"cut.csv.gz: cannot be read after line \d+: Compressed file ended"):
        for fields, problem in iter_rows(cut, read_header(cut), MAX_ROW_BYTES):
            assert problem is None
            rows.append(fields["ImageID"])
    assert 0 < len(rows) < 3000 and rows == [f"{i:016x}" for i in range(len(rows))]


def test_a_quote_still_open_at_the_end_of_the_file_costs_only_its_row(tmp_path: Path) -> None:
    path = hostile_file(tmp_path, [row_text("a1", '"never closed'), row_text("a2", "ok"), row_text("a3", "ok")])
    found = list(iter_rows(path, read_header(path), MAX_ROW_BYTES))
    assert [(fields["ImageID"], problem) for fields, problem in found] == [
        ("a1", "a quoted field never closes"), ("a2", None), ("a3", None)]
