"""Results parts, their merge after any crash, shard locks and the sharing of
limits among processes: the pieces a multi-process run stands on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from openimages_crawler.checkpoint.ledger import ResultsLedger
from openimages_crawler.checkpoint.parts import merge, merge_owned, recover
from openimages_crawler.crawl.processes import plan_processes, process_count, shares
from openimages_crawler.monitor.progress import Counts
from openimages_crawler.monitor.status import (
    PartStatus,
    read_status,
    set_counts,
    total_counts,
)
from openimages_crawler.store.layout import PARTS_DIR, owned_by, part_path
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.lock import StoreLock, StoreLocked
from tests.conftest import project_settings, read_csv

HEADER = b"ImageID,Title\r\n"


def write_part(final: Path, label: str, *ids: str) -> Path:
    path = part_path(final, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(HEADER + b"".join(f"{i},t\r\n".encode() for i in ids))
    return path


def ids_of(path: Path) -> list[str]:
    return [row["ImageID"] for row in read_csv(path)[1]]


def test_shares_add_up_and_differ_by_at_most_one() -> None:
    assert shares(16, 3) == [6, 5, 5]
    assert shares(2, 2) == [1, 1]
    assert sum(shares(128, 7)) == 128


def test_the_limits_are_shared_out_and_a_limit_below_the_count_lowers_it() -> None:
    settings = project_settings({"CONCURRENT_REQUESTS": "10", "CONCURRENT_REQUESTS_PER_DOMAIN": "3",
                                 "OPENIMAGES_WORKERS": "4"})
    plan = plan_processes(settings, 2)
    assert plan.count == 2 and not plan.note
    assert [s["CONCURRENT_REQUESTS"] for s in plan.settings] == ["5", "5"]
    assert [s["CONCURRENT_REQUESTS_PER_DOMAIN"] for s in plan.settings] == ["2", "1"]
    assert [s["OPENIMAGES_WORKERS"] for s in plan.settings] == ["2", "2"]
    assert all(s["OPENIMAGES_PROCESSES"] == "1" and s["OPENIMAGES_PROGRESS"] == "off" for s in plan.settings)
    narrow = plan_processes(project_settings({"CONCURRENT_REQUESTS_PER_DOMAIN": "2"}), 8)
    assert narrow.count == 2 and "CONCURRENT_REQUESTS_PER_DOMAIN=2" in narrow.note
    assert [s["CONCURRENT_REQUESTS_PER_DOMAIN"] for s in narrow.settings] == ["1", "1"]


def test_process_count_takes_auto_or_a_positive_number() -> None:
    from scrapy.exceptions import UsageError

    assert process_count("auto") == len(os.sched_getaffinity(0))
    assert process_count("3") == 3
    for bad in ("0", "-1", "many", ""):
        with pytest.raises(UsageError, match="OPENIMAGES_PROCESSES must be auto or a number"):
            process_count(bad)


def test_a_part_belongs_to_the_shards_that_contain_it() -> None:
    assert owned_by("1of1", 1, 1) and owned_by("3of4", 1, 1)
    assert owned_by("1of4", 1, 2) and owned_by("3of4", 1, 2) and not owned_by("2of4", 1, 2)
    assert owned_by("2of2", 2, 2) and not owned_by("1of3", 1, 2)  # 3 shards do not nest in 2
    assert not owned_by("junk", 1, 1)


def test_merge_appends_the_parts_rows_once_and_removes_the_parts(tmp_path: Path) -> None:
    final = tmp_path / "train" / "images-success.csv"
    final.parent.mkdir()
    final.write_bytes(HEADER + b"a,t\r\n")
    first, second = write_part(final, "1of2", "b", "c"), write_part(final, "2of2", "d")
    second.write_bytes(second.read_bytes() + b'e,"torn')  # a kill -9 mid-row
    assert merge(final, [first, second]) == 3
    assert ids_of(final) == ["a", "b", "c", "d"]
    assert not first.exists() and not second.exists()
    assert read_csv(final)[0] == ["ImageID", "Title"]


def test_merge_makes_the_file_when_there_was_none(tmp_path: Path) -> None:
    final = tmp_path / "train" / "images-failure.csv"
    write_part(final, "1of1", "x")
    assert merge_owned([str(tmp_path / "*" / "images-failure.csv")]) == 1
    assert ids_of(final) == ["x"] and not (final.parent / PARTS_DIR).exists()


def test_merge_owned_leaves_other_shards_parts(tmp_path: Path) -> None:
    final = tmp_path / "train" / "images-success.csv"
    mine, theirs = write_part(final, "1of4", "a"), write_part(final, "2of4", "b")
    merge_owned([str(tmp_path / "*" / "images-success.csv")], 1, 2)
    assert ids_of(final) == ["a"] and not mine.exists() and theirs.exists()


@pytest.mark.parametrize("renamed", [True, False])
def test_a_merge_cut_off_at_any_point_is_finished_or_undone(tmp_path: Path, renamed: bool) -> None:
    """The journal says whether the rename happened: the rows are never lost
    and never counted twice."""
    final = tmp_path / "train" / "images-success.csv"
    final.parent.mkdir()
    final.write_bytes(HEADER + b"a,t\r\n")
    part = write_part(final, "1of1", "b")
    merged = HEADER + b"a,t\r\nb,t\r\n"
    journal = final.parent / PARTS_DIR / "images-success.csv.merge"
    journal.write_text(json.dumps({"size": len(merged), "parts": [part.name]}))
    (final.parent / PARTS_DIR / f"images-success.csv.merging-{os.getpid() + 1}").write_bytes(merged)
    if renamed:
        final.write_bytes(merged)  # killed after the rename, before the parts were deleted
    recover(final)
    assert not journal.exists() and not list(final.parent.glob(f"{PARTS_DIR}/*.merging-*"))
    assert part.exists() is not renamed
    merge_owned([str(tmp_path / "*" / "images-success.csv")])
    assert ids_of(final) == ["a", "b"]


def test_the_ledger_reads_the_parts_too(tmp_path: Path) -> None:
    final = tmp_path / "train" / "images-success.csv"
    final.parent.mkdir()
    final.write_bytes(HEADER + b"a,t\r\n")
    write_part(final, "2of2", "b")
    ledger = ResultsLedger.load({"success": [str(tmp_path / "*" / "images-success.csv")], "failure": []},
                                ["ImageID", "Title"])
    assert "a" in ledger.succeeded and "b" in ledger.succeeded


def test_one_run_per_shard_and_one_sharding_at_a_time(tmp_path: Path) -> None:
    first = StoreLock(tmp_path, 1, 2)
    first.acquire()
    other_shard = StoreLock(tmp_path, 2, 2)
    other_shard.acquire()  # shards of one N share the store
    with pytest.raises(StoreLocked, match=r"shard 1/2 of .* is in use by another crawl \(host .*, pid "):
        StoreLock(tmp_path, 1, 2).acquire()
    with pytest.raises(StoreLocked, match="in use by a crawl in 2 shards"):
        StoreLock(tmp_path).acquire()  # an unsharded crawl would overlap both
    first.release()
    other_shard.release()
    whole = StoreLock(tmp_path)
    whole.acquire()
    with pytest.raises(StoreLocked, match="in use by a crawl in 1 shards"):
        StoreLock(tmp_path, 1, 2).acquire()
    whole.release()


def test_records_add_up_to_the_run(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    for part, counts in (("1of2", Counts(5.0, done=4, ok=3, failed=1, failures={"timeout": 1}, total=10)),
                         ("2of2", Counts(6.0, done=2, ok=1, failed=1, failures={"timeout": 1}, total=9))):
        record = PartStatus(part=part)
        set_counts(record, counts, {})
        record.write(store)
    records = [read_status(store, "1of2"), read_status(store, "2of2")]
    assert None not in records and read_status(store, "3of3") is None
    total = total_counts([r for r in records if r], 7.0)
    assert (total.done, total.ok, total.failed, total.total, total.failures) == (6, 4, 2, 19, {"timeout": 2})
