"""``scrapy pack``: a tree of images (every kind, broken files, clashing and
unusable names) into packs, read back with the real readers, then resumed."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from openimages_crawler.testing.images import encoded, photo
from tests.conftest import ROOT
from tests.test_containers import check_manifest, manifest, webdataset_samples
from tests.test_resize import odd_tree

pytestmark = pytest.mark.e2e


def run_pack(in_dir: Path, out_dir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scrapy", "pack", "-i", str(in_dir), "-o", str(out_dir), *options],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)


def packs_of(out: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in out.iterdir() if path.suffix in (".tar", ".parquet")}


def test_a_tree_packed_then_resumed(tmp_path: Path) -> None:
    tree = tmp_path / "in"
    good, broken = odd_tree(tree)
    out, log = tmp_path / "out" / "train" / "crop", tmp_path / "left-out.csv"
    done = run_pack(tree, out, "--container", "webdataset", "--shard-size", "4", "--log", str(log))
    assert done.returncode == 0, done.stderr[-3000:]
    with open(log, newline="") as handle:
        left_out = {Path(row["Path"]).relative_to(tree).as_posix(): row["FailureReason"]
                    for row in csv.DictReader(handle)}
    # One file per stem (the first in the walk's order); a stem with a dot is no key.
    assert left_out == {**broken, "twin.png": "duplicate_key", "clash.png": "duplicate_key",
                        "clash.jpg.png": "bad_name"}
    packed = {Path(name).stem: name for name in sorted(good) if name not in left_out}
    samples = {key: sample for key, sample in webdataset_samples(out.parent.parent, "crop").items()}
    assert set(samples) == set(packed)
    for key, name in packed.items():
        sample = samples[key]
        ext = next(field for field in sample if field not in ("__key__", "__url__", "json", "__local_path__"))
        assert sample[ext] == (tree / name).read_bytes()  # packed as they are
        assert sample["json"]
    check_manifest(out.parent.parent, "crop", ".tar")
    assert not (out / ".tmp").exists()  # no staging left

    before = packs_of(out)
    again = run_pack(tree, out, "--container", "webdataset", "--shard-size", "4")
    assert again.returncode == 0, again.stderr[-3000:]
    # Every key in a pack is skipped (the two duplicates' too); the broken files are left out again.
    assert packs_of(out) == before and f"Packed 0, skipped {len(packed) + 2} " in again.stderr
    (tree / "new").mkdir()
    (tree / "new" / "latecomer.jpg").write_bytes(encoded(photo(64, 48, 9), "JPEG"))
    more = run_pack(tree, out, "--container", "webdataset", "--shard-size", "4")
    assert more.returncode == 0, more.stderr[-3000:]
    rows = manifest(out.parent.parent, "crop")
    assert rows[-1]["count"] == "1" and rows[-1]["first_image_id"] == "latecomer"
    assert {name: stamp for name, stamp in packs_of(out).items() if name in before} == before

    as_parquet = run_pack(tree, tmp_path / "pq", "--container", "parquet", "--shard-size", "100", "-j", "2")
    assert as_parquet.returncode == 0, as_parquet.stderr[-3000:]
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "pq" / "000000.parquet")
    assert sorted(table.column("ImageID").to_pylist()) == sorted([*packed, "latecomer"])
    assert {"Path", "width", "height", "format"} <= set(table.column_names)


def test_bad_arguments_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for options, message in (
        (["-i", str(tmp_path / "missing"), "-o", str(tmp_path / "o"), "--container", "parquet"], "not a folder"),
        (["-i", str(tmp_path / "in"), "-o", str(tmp_path / "in"), "--container", "parquet"], "another folder"),
        (["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--container", "parquet", "--shard-size", "0"],
         "--shard-size 0: give 1 or more"),
        (["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--container", "zip"], "invalid choice"),
    ):
        done = subprocess.run([sys.executable, "-m", "scrapy", "pack", *options], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr, (options, done.stderr[-1000:])
        assert "Traceback" not in done.stderr
