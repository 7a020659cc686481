"""Crash repair of results CSVs and the compact id set."""

from __future__ import annotations

from pathlib import Path

from openimages_crawler.checkpoint.csvfiles import repair_tail
from openimages_crawler.checkpoint.ledger import read_ids
from openimages_crawler.dataset.idset import IdSet
from openimages_crawler.store.local import LocalStore, remove_dead_staging


def test_repair_cuts_only_a_torn_last_record(tmp_path: Path) -> None:
    path = tmp_path / "images-success.csv"
    whole = 'ImageID,Title\na1,"two\nlines"\na2,plain\n'
    path.write_text(whole)
    assert repair_tail(path) == 0
    path.write_text(whole + 'a3,"torn\nrecord')
    assert repair_tail(path) > 0
    assert path.read_text() == whole
    path.write_text(whole + "a4,no newline")
    repair_tail(path)
    assert path.read_text() == whole
    assert sorted(read_ids(path).other) == ["a1", "a2"]


def test_id_set_holds_hex_and_other_ids() -> None:
    ids = ["000060e3121c7305", "ffffffffffffffff", "0000000000000000", "img_7", "ABCDEF0123456789"]
    found = IdSet(ids)
    for image_id in ids:
        assert image_id in found
    assert "000060e3121c7306" not in found
    assert "abcdef0123456789" not in found  # ids are case-sensitive
    assert len(found) == 5
    merged = IdSet.union([IdSet(["0000000000000001"]), IdSet(["x"]), IdSet()])
    assert "0000000000000001" in merged and "x" in merged and len(merged) == 2


def test_staging_of_dead_processes_is_removed(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    dead = store.staging.parent / f"{store.staging.name.rsplit('-', 1)[0]}-999999999"
    dead.mkdir(parents=True)
    (dead / "x.part").write_bytes(b"partial")
    assert remove_dead_staging(tmp_path) == [dead]
    store.open()
    assert store.staging.is_dir()
    store.write("a/b.jpg", b"data")
    assert (tmp_path / "a" / "b.jpg").read_bytes() == b"data"
    assert store.stat("a/b.jpg") == 4 and store.stat("a/none.jpg") is None
    assert list(store.staging.iterdir()) == []
