"""Selection by id list, exclusion, shard, offset and limit: the filters on
their own and combined in real crawls."""

from __future__ import annotations

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
    read_exclusions,
    read_id_list,
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
