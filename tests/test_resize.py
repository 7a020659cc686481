"""``scrapy resize``: a tree with broken and odd files, resumed, killed, and
the same pixels as the crawl's resize."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from openimages_crawler.imaging.pillow import (
    REDUCING_GAP,
    ResizeSpec,
    decode,
    resized_bytes,
)
from openimages_crawler.testing.images import IMAGE_KINDS, bomb_png, encoded, photo
from tests.conftest import ROOT, wait_for

MAX_PIXELS = 178956970


def resize_command(in_dir: Path, out_dir: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "scrapy", "resize", "-i", str(in_dir), "-o", str(out_dir), *options]


def run_resize(in_dir: Path, out_dir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(resize_command(in_dir, out_dir, *options), cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


def odd_tree(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Images (relative path -> expected output, relative) and broken files
    (relative path -> expected FailureReason)."""
    good: dict[str, str] = {}
    for index, (kind, (ext, maker)) in enumerate(IMAGE_KINDS.items()):
        folder = ["", "nested/deeper/", "space and ünïcode/"][index % 3]
        name = f"{folder}{kind}.{ext.upper() if kind == 'jpeg_gray' else ext}"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(maker(index))  # type: ignore[operator]
        good[name] = f"{folder}{kind}.webp"
    # Two inputs with one stem in one folder keep their full names.
    (root / "twin.jpg").write_bytes(encoded(photo(300, 200, 1), "JPEG"))
    (root / "twin.png").write_bytes(encoded(photo(300, 200, 2), "PNG"))
    good.update({"twin.jpg": "twin.jpg.webp", "twin.png": "twin.png.webp"})
    # ... and so do names that would clash with those full names.
    for name in ("clash.jpg", "clash.png", "clash.jpg.png"):
        (root / name).write_bytes(encoded(photo(200, 100, len(name)), "PNG" if name.endswith("png") else "JPEG"))
    good.update({"clash.jpg": "clash.jpg.webp", "clash.png": "clash.png.webp",
                 "clash.jpg.png": "clash.jpg.png.webp"})
    broken = {
        "nested/text.jpg": "not_image",
        "empty.png": "not_image",
        "truncated.jpg": "corrupt",
        "bomb.png": "too_large",
    }
    (root / "nested" / "text.jpg").write_text("<html>no photo here</html>")
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(encoded(photo(900, 700, 3), "JPEG", quality=92)[:15000])
    (root / "bomb.png").write_bytes(bomb_png())
    (root / "notes.txt").write_text("not an image: left alone")
    os.mkfifo(root / "pipe.jpg")  # reading it would hang: not a regular file, left alone
    os.symlink(root / "gone.jpg", root / "dangling.jpg")  # a broken link, left alone
    (root / ".hidden").mkdir()
    (root / ".hidden" / "skip.jpg").write_bytes(encoded(photo(50, 50, 4), "JPEG"))
    os.symlink(root / "nested", root / "link-to-nested")  # a linked folder is not followed
    return good, broken


@pytest.mark.e2e
def test_a_tree_with_broken_and_odd_files(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    good, broken = odd_tree(source)
    done = run_resize(source, out, "--size", "96", "--mode", "FillCrop", "--ext", "webp",
                      "--algorithm", "bicubic", "-j", "2", "--log", str(tmp_path / "failed.csv"))
    assert done.returncode == 0, done.stderr[-3000:]
    made = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert made == set(good.values())
    for name in good.values():
        with Image.open(out / name) as image:
            assert (image.format, image.mode, image.size) == ("WEBP", "RGB", (96, 96))
    with open(tmp_path / "failed.csv", newline="", encoding="utf-8") as handle:
        failed = {Path(row["Path"]).relative_to(source).as_posix(): row["FailureReason"]
                  for row in csv.DictReader(handle)}
    assert failed == broken
    assert f"Resized {len(good)}, skipped 0 (already there), failed {len(broken)}, other files left alone 3" \
        in done.stderr
    assert f"Done: {len(good) + len(broken)}/{len(good) + len(broken)} files (100.0%)" in done.stderr
    # A rerun skips every output (untouched) and reports the broken files again.
    stamps = {name: (out / name).stat().st_mtime_ns for name in good.values()}
    again = run_resize(source, out, "--size", "96", "--mode", "FillCrop", "--ext", "webp")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resized 0, skipped {len(good)}" in again.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in good.values()} == stamps
    assert not (out / ".tmp").exists()


@pytest.mark.e2e
def test_same_pixels_as_the_crawl_and_upright(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for kind in ("jpeg_exif_rotated", "jpeg_cmyk", "png_16bit", "jpeg_large"):
        ext, maker = IMAGE_KINDS[kind]
        (source / f"{kind}.{ext}").write_bytes(maker(7))  # type: ignore[operator]
    assert run_resize(source, out, "--size", "120").returncode == 0
    spec = ResizeSpec(size=120)
    for path in source.iterdir():
        data = path.read_bytes()
        expected = resized_bytes(decode(data, MAX_PIXELS, reduce_for=(spec,)), spec, reducing_gap=REDUCING_GAP)
        assert (out / f"{path.stem}.jpg").read_bytes() == expected
    with Image.open(out / "jpeg_exif_rotated.jpg") as image:  # stored portrait, EXIF says landscape
        assert image.size == (120, 80)


@pytest.mark.e2e
def test_killed_then_resumed_leaves_only_whole_files(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    big = encoded(photo(2400, 1800, 5), "PNG")  # slow to decode: the kill lands mid-run
    for index in range(60):
        (source / f"{index:03d}.png").write_bytes(big)
    process = subprocess.Popen(resize_command(source, out, "--size", "64", "-j", "2"), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: len(list(out.glob("*.jpg"))) >= 3, timeout=60)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = list(out.glob("*.jpg"))
    assert 3 <= len(finished) < 60
    for path in finished:  # whole files only under final names
        with Image.open(path) as image:
            image.load()
    time.sleep(0.2)
    done = run_resize(source, out, "--size", "64")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(out.glob("*.jpg"))) == 60
    assert f"skipped {len(finished)}" in done.stderr
    assert not (out / ".tmp").exists()  # the killed run's staging is gone


def descendants(pid: int) -> dict[int, int]:
    """Processes below ``pid`` and their depth (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found: dict[int, int] = {}
    frontier = {pid: 0}
    while frontier:
        found.update(frontier)
        frontier = {child: found[parent] + 1 for child, parent in parents.items()
                    if parent in frontier and child not in found}
    del found[pid]
    return found


@pytest.mark.e2e
def test_a_worker_that_dies_fails_its_files_and_the_run_goes_on(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    big = encoded(photo(2400, 1800, 6), "PNG")
    for index in range(40):
        (source / f"{index:03d}.png").write_bytes(big)
    process = subprocess.Popen(resize_command(source, out, "--size", "64", "-j", "2", "--log",
                                              str(tmp_path / "failed.csv")),
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(list(out.glob("*.jpg"))) >= 2, timeout=60)
    workers = [pid for pid, depth in descendants(process.pid).items() if depth == 2]  # under the forkserver
    assert workers
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    with open(tmp_path / "failed.csv", newline="") as handle:
        failed = list(csv.DictReader(handle))
    assert failed and all("worker process died" in row["FailureDetails"] for row in failed)
    assert len(list(out.glob("*.jpg"))) + len(failed) == 40  # the others were done by a new pool
    again = run_resize(source, out, "--size", "64")
    assert again.returncode == 0 and len(list(out.glob("*.jpg"))) == 40


def test_a_job_lost_with_its_pool_is_done_only_when_its_whole_output_is_there(tmp_path: Path) -> None:
    """A worker's death breaks the pool: the jobs another worker had already
    written (renamed into place) count as done, the others fail."""
    from openimages_crawler.imaging.tree import ResizeJob
    from openimages_crawler.run.resize import lost_job_result

    written, lost = tmp_path / "a.jpg", tmp_path / "b.jpg"
    written.write_bytes(b"\xff\xd8 whole")
    assert lost_job_result(ResizeJob(tmp_path / "a.png", written)).status == "ok"
    failed = lost_job_result(ResizeJob(tmp_path / "b.png", lost))
    assert failed.status == "corrupt" and "worker process died" in failed.details


def test_an_unlistable_folder_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from openimages_crawler.imaging import tree as resizer

    source = tmp_path / "in"
    (source / "locked").mkdir(parents=True)
    (source / "a.jpg").write_bytes(encoded(photo(50, 50, 1), "JPEG"))
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    errors: list[OSError] = []
    jobs = list(resizer.find_jobs(source, tmp_path / "out", "jpg", onerror=errors.append))
    assert [job.source.name for job in jobs if isinstance(job, resizer.ResizeJob)] == ["a.jpg"]
    assert [Path(error.filename).name for error in errors] == ["locked"]


@pytest.mark.e2e
def test_output_inside_the_input_and_bad_arguments(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.jpg").write_bytes(encoded(photo(200, 100, 1), "JPEG"))
    inside = source / "small"
    for _ in range(2):  # the second run must not resize its own outputs
        assert run_resize(source, inside, "--size", "50").returncode == 0
    assert sorted(p.relative_to(inside).as_posix() for p in inside.rglob("*")) == ["a.jpg"]
    for options, message in (
        (("--size", "50", "-o", str(source)), "-o must be another folder"),
        (("--size", "0"), "positive number of pixels"),
        (("--size", "50", "--mode", "Stretch"), "invalid choice: 'Stretch'"),
        (("--size", "50", "-j", "-1"), "give 1 or more processes"),
    ):
        command = resize_command(source, tmp_path / "out") + list(options)
        if "-o" in options[2:]:
            command = [sys.executable, "-m", "scrapy", "resize", "-i", str(source), *options]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and message in done.stderr, (options, done.stderr[-800:])
    missing = run_resize(tmp_path / "nope", tmp_path / "out", "--size", "50")
    assert missing.returncode != 0 and "not a folder" in missing.stderr


@pytest.mark.e2e
def test_fit_pad_and_short_side(tmp_path: Path) -> None:
    """The new modes through the command: FitPad pads with --pad-color (as the
    crawl's resize, byte for byte), ShortSide makes the shorter side the size,
    enlarging a small image; a bad colour is a one-line usage error."""
    from openimages_crawler.imaging.pillow import read_provenance

    source = tmp_path / "in"
    source.mkdir()
    (source / "wide.jpg").write_bytes(encoded(photo(300, 150, 1), "JPEG"))
    (source / "small.jpg").write_bytes(encoded(photo(60, 40, 2), "JPEG"))
    padded, short = tmp_path / "pad", tmp_path / "short"
    done = run_resize(source, padded, "--size", "100", "--mode", "FitPad", "--pad-color", "#808080", "--ext", "png")
    assert done.returncode == 0, done.stderr[-3000:]
    spec = ResizeSpec(mode="FitPad", size=100, format="png", pad_color=(128, 128, 128))
    for name, (left, top) in (("wide", (0, 25)), ("small", (20, 30))):  # where the image starts
        data = (source / f"{name}.jpg").read_bytes()
        assert (padded / f"{name}.png").read_bytes() == resized_bytes(
            decode(data, MAX_PIXELS, reduce_for=(spec,)), spec, reducing_gap=REDUCING_GAP)
        with Image.open(padded / f"{name}.png") as image:
            assert image.size == (100, 100)
            assert image.getpixel((0, 0)) == image.getpixel((99, 99)) == (128, 128, 128)
            assert image.getpixel((left, top)) != (128, 128, 128) and image.getpixel((left, top - 1)) == (128, 128, 128)
            provenance = read_provenance(image)
            assert provenance is not None and provenance[1].pad_color == (128, 128, 128)
    done = run_resize(source, short, "--size", "120", "--mode", "ShortSide", "--ext", "png")
    assert done.returncode == 0, done.stderr[-3000:]
    for name, size in (("wide", (240, 120)), ("small", (180, 120))):
        with Image.open(short / f"{name}.png") as image:
            assert image.size == size
    bad = run_resize(source, tmp_path / "bad", "--size", "50", "--mode", "FitPad", "--pad-color", "nocolour")
    assert bad.returncode != 0 and "--pad-color: 'nocolour' is not a colour Pillow knows" in bad.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_formats(tmp_path: Path, ext: str) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    (source / "a.jpg").write_bytes(encoded(photo(300, 150, 1), "JPEG"))
    assert run_resize(source, out, "--size", "100", "--mode", "FillDistort", "--ext", ext).returncode == 0
    with Image.open(out / f"a.{ext}") as image:
        assert image.size == (100, 100) and image.format == {"png": "PNG", "jpg": "JPEG"}[ext]
