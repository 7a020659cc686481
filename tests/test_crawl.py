"""End-to-end crawls: real `scrapy crawl` processes against the local mirror."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from openimages_crawler.checkpoint.csvfiles import iter_records
from openimages_crawler.checkpoint.parts import all_results
from openimages_crawler.dataset.catalogue import (
    FAILURE_COLUMNS,
    IMAGE_INFO_COLUMNS,
    IMAGE_SIZE_COLUMNS,
    IMAGES_CSV_COLUMNS,
)
from openimages_crawler.reasons import FAILURE_REASONS, POLICY_REASONS
from openimages_crawler.testing.images import IMAGE_KINDS
from openimages_crawler.testing.mirror import MirrorRow, Route
from tests.conftest import (
    ROOT,
    Served,
    count_rows,
    crawl_command,
    kill,
    outcomes,
    read_csv,
    run_crawl,
    serve,
    start_crawl,
    summary_of,
    unlisted_root_names,
    wait_for,
)
from tests.test_database import readme_queries

pytestmark = pytest.mark.e2e


def image_requests(served: Served) -> int:
    """Requests the mirror served for image paths (not counting retries of faults)."""
    return sum(served.server.counter.requests.values())


def stored_files(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png", ".webp")]


def test_every_row_gets_its_expected_outcome_exactly_once(mirror: Served, tmp_path: Path) -> None:
    store = tmp_path / "store"
    done = run_crawl(mirror.metadata, store, {"OPENIMAGES_SAVE_ORIGINALS": "True"})

    found = outcomes(store)
    expected = mirror.mirror.expected()
    assert {k: v for k, v in found.items()} == {k: [v] for k, v in expected.items()}
    # The closing summary: rows by outcome, where the files are, what to run next.
    summary = summary_of(done.stderr)
    reasons = Counter(reason for reason in expected.values() if reason != "success")
    stored = len(expected) - sum(reasons.values())
    assert re.fullmatch(rf"Finished after \d+s: {len(expected)} rows accounted: {stored} stored, "
                        rf"{sum(reasons.values())} failed, 0 already done before, 0 pending", summary[0]), summary
    assert sorted(summary[1].removeprefix("  failed by reason: ").split(", ")) == sorted(
        f"{reason} {count}" for reason, count in reasons.items())
    assert f"  results: {store}/train/images-success.csv, {store}/train/images-failure.csv" in summary
    assert f"  report: {store}/report.html" in summary and f"  database: {store}/openimages.duckdb" in summary
    assert summary[-1].endswith("-a retry_failed=transient") and "scrapy crawl openimages -a metadata=" in summary[-1]
    assert "ERROR" not in done.stderr
    # Every FailureReason is exercised by the mirror but io_error (a crawl never records it),
    # blocked_host (the mirror itself is on 127.x) and the two that are not errors (opted_out,
    # filtered: tests/test_polite.py): each has a test of its own.
    assert set(expected.values()) >= set(FAILURE_REASONS) - {"io_error", "blocked_host", *POLICY_REASONS}

    # Results keep the input's columns, in order, and its values byte for byte; then the
    # stored original's upright size (empty for a failure).
    header, success = read_csv(store / "train" / "images-success.csv")
    assert header == [*IMAGES_CSV_COLUMNS, *IMAGE_SIZE_COLUMNS]
    failure_header, failures = read_csv(store / "train" / "images-failure.csv")
    assert failure_header == [*IMAGES_CSV_COLUMNS, *IMAGE_SIZE_COLUMNS, *FAILURE_COLUMNS]
    by_id = {row.fields["ImageID"]: row.fields for row in mirror.mirror.rows}
    for row in success:
        assert {k: row[k] for k in IMAGES_CSV_COLUMNS} == {k: by_id[row["ImageID"]][k] for k in IMAGES_CSV_COLUMNS}
        assert int(row["OriginalWidth"]) > 0 and int(row["OriginalHeight"]) > 0
    assert all(row["OriginalWidth"] == row["OriginalHeight"] == "" for row in failures)
    assert all(row["FailureDetails"] for row in failures)

    # Originals are byte-exact and match the metadata; resized are RGB, within the box.
    for row in success:
        image_id = row["ImageID"]
        ext = "png" if row["OriginalURL"].endswith(".png") else "jpg"
        original = store / "train" / "images-original" / image_id[:3] / f"{image_id}.{ext}"
        body = original.read_bytes()
        assert len(body) == int(row["OriginalSize"])
        assert base64.b64encode(hashlib.md5(body).digest()).decode() == row["OriginalMD5"]
        resized = store / "train" / "images-resized" / image_id[:3] / f"{image_id}.jpg"
        with Image.open(resized) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert max(image.size) <= 224
    # Nothing for failed rows, nothing left in staging.
    failed_ids = {row["ImageID"] for row in failures}
    assert not [p for p in stored_files(store) if p.stem in failed_ids]
    assert not list((store / ".tmp").glob("*")) if (store / ".tmp").exists() else True
    # Every name the crawl made at the store's root is a subset or in the layout's list.
    assert not unlisted_root_names(os.listdir(store), {"train"})


def test_rerun_downloads_nothing_and_records_nothing_twice(mirror: Served, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_crawl(mirror.metadata, store, {"OPENIMAGES_SAVE_ORIGINALS": "True"})
    first = outcomes(store)
    before = image_requests(mirror)
    run_crawl(mirror.metadata, store, {"OPENIMAGES_SAVE_ORIGINALS": "True"})
    assert image_requests(mirror) == before
    assert outcomes(store) == first


def test_missing_resized_file_is_rebuilt_from_the_stored_original(
    clean_mirror: Served, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    settings = {"OPENIMAGES_SAVE_ORIGINALS": "True"}
    run_crawl(clean_mirror.metadata, store, settings)
    resized = sorted((store / "train" / "images-resized").rglob("*.jpg"))
    victims = resized[:3]
    for path in victims:
        path.unlink()
    # A stored original with a wrong MD5 must not be trusted: it is downloaded again.
    originals = sorted((store / "train" / "images-original").rglob("*.jpg"))
    before = image_requests(clean_mirror)
    # The success file forgets the last row: its outputs are complete, so no download.
    success = store / "train" / "images-success.csv"
    with open(success, "rb") as handle:
        records = list(iter_records(handle))  # a title may hold line breaks
    success.write_bytes(b"".join(records[:-1]))
    run_crawl(clean_mirror.metadata, store, settings)
    assert all(path.stat().st_size > 0 for path in victims)
    assert image_requests(clean_mirror) == before
    assert all(v == ["success"] for v in outcomes(store).values())
    assert len(outcomes(store)) == len(clean_mirror.mirror.rows)

    # Corrupt one stored original and drop its resized file: re-downloaded, not trusted.
    bad = originals[0]
    bad.write_bytes(b"\0" * bad.stat().st_size)
    next(iter((store / "train" / "images-resized").rglob(f"{bad.stem}.jpg"))).unlink()
    run_crawl(clean_mirror.metadata, store, settings)
    assert image_requests(clean_mirror) == before + 1
    with Image.open(bad) as image:
        image.load()


@pytest.mark.parametrize(
    ("mode", "resample", "fmt"),
    [
        ("ShrinkToFit", "lanczos", "jpg"),
        ("FillCrop", "nearest", "png"),
        ("FillDistort", "bilinear", "webp"),
        ("ShrinkToFit", "bicubic", "webp"),
        ("FillCrop", "box", "jpg"),
        ("FillDistort", "hamming", "png"),
    ],
)
def test_resize_modes_resample_and_formats(
    clean_mirror: Served, tmp_path: Path, mode: str, resample: str, fmt: str
) -> None:
    store = tmp_path / "store"
    size = 200  # every mirror kind is larger but jpeg_small (160x120)
    run_crawl(
        clean_mirror.metadata,
        store,
        {
            "OPENIMAGES_RESIZE_MODE": mode,
            "OPENIMAGES_RESAMPLE": resample,
            "OPENIMAGES_RESIZE_FORMAT": fmt,
            "OPENIMAGES_RESIZE_SIZE": str(size),
            "OPENIMAGES_SUBDIR_CHARS": "0",
        },
    )
    pillow_format = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
    for row in clean_mirror.mirror.rows:
        image_id = row.fields["ImageID"]
        path = store / "train" / "images-resized" / f"{image_id}.{fmt}"
        with Image.open(path) as image:
            assert image.format == pillow_format
            assert image.mode == "RGB"
            if mode == "ShrinkToFit":
                if row.kind == "jpeg_small":
                    assert image.size == (160, 120)  # smaller than the box: kept
                else:
                    assert max(image.size) == size
            else:
                assert image.size == (size, size)
    assert not (store / "train" / "images-original").exists()


def test_image_kinds_come_out_upright_rgb(clean_mirror: Served, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_crawl(clean_mirror.metadata, store, {"OPENIMAGES_RESIZE_SIZE": "150"})
    kinds = {row.kind: row.fields["ImageID"] for row in clean_mirror.mirror.rows}
    assert set(kinds) == set(IMAGE_KINDS)
    for kind, image_id in kinds.items():
        with Image.open(store / "train" / "images-resized" / image_id[:3] / f"{image_id}.jpg") as im:
            assert im.mode == "RGB", kind
            rgb = im.convert("RGB")
            if kind == "jpeg_exif_rotated":
                assert im.size == (150, 100)  # landscape again after orientation 6
                red, green, blue = rgb.getpixel((5, 5))
                assert red > 180 and green < 90 and blue < 90  # the marker is top-left
            if kind == "png_rgba":  # alpha 0 along the top: flattened on white
                assert rgb.getpixel((im.width // 2, 0)) == pytest.approx((255, 255, 255), abs=12)
            if kind == "png_16bit":  # white at the bottom: scaled to 8 bits, not clipped
                assert rgb.getpixel((im.width // 2, im.height - 2))[0] > 200
                assert rgb.getpixel((im.width // 2, 1))[0] < 40


def test_v4_gzip_subset_and_limit(tmp_path: Path) -> None:
    served = serve(tmp_path, faults=False)
    try:
        rows = served.mirror.rows
        for index, row in enumerate(rows):
            row.fields["Subset"] = "validation" if index % 2 else "train"
        plain = served.mirror.write_metadata(tmp_path / "info.csv", IMAGE_INFO_COLUMNS)
        metadata = tmp_path / "info.csv.gz"
        metadata.write_bytes(gzip.compress(plain.read_bytes()))
        store = tmp_path / "store"
        run_crawl(metadata, store, subset="validation", limit="3")
        header, success = read_csv(store / "validation" / "images-success.csv")
        assert header == [*IMAGE_INFO_COLUMNS, *IMAGE_SIZE_COLUMNS]
        wanted = [r.fields["ImageID"] for r in rows if r.fields["Subset"] == "validation"][:3]
        assert sorted(row["ImageID"] for row in success) == sorted(wanted)
        assert not (store / "train").exists()
    finally:
        served.server.close()


def test_a_store_that_cannot_be_written_stops_the_crawl_and_loses_no_row(clean_mirror: Served, tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "train").mkdir(parents=True)
    blocker = store / "train" / "images-resized"
    blocker.write_text("a file where a folder should be")
    settings = {"DOWNLOAD_MAXSIZE": "60000"}
    stopped = subprocess.run(crawl_command(clean_mirror.metadata, store, settings), cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 1
    error = stopped.stderr.splitlines()[-1]
    assert error.startswith("ERROR: the store cannot be written") and "still pending" in error
    # io_error is never a verdict: what could not be written has no results row.
    assert all(found == ["too_large"] for found in outcomes(store).values())
    blocker.unlink()  # the store is writable again: the rerun stores the pending rows
    run_crawl(clean_mirror.metadata, store, settings)
    found = outcomes(store)
    sizes = {r.fields["ImageID"]: int(r.fields["OriginalSize"]) for r in clean_mirror.mirror.rows}
    assert found == {image_id: ["too_large" if size > 60000 else "success"] for image_id, size in sizes.items()}
    assert "too_large" in {v[0] for v in found.values()}


def test_below_the_free_space_floor_the_crawl_stops_before_the_disk_is_full(
    clean_mirror: Served, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    stopped = subprocess.run(
        crawl_command(clean_mirror.metadata, store, {"OPENIMAGES_MIN_FREE_BYTES": str(2**62)}),
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert stopped.returncode == 1
    assert "under OPENIMAGES_MIN_FREE_BYTES" in stopped.stderr.splitlines()[-1]
    assert outcomes(store) == {}
    # The end-of-run extras stay under the floor too, said in one line.
    assert stopped.stderr.count("attribution files are not updated") == 1
    assert not [name for name in ("openimages.duckdb", "report.json", "report.html") if (store / name).exists()]
    assert not list(store.glob("*/ATTRIBUTION.*"))
    assert not list((store / "train").glob("images-resized/*/*"))
    run_crawl(clean_mirror.metadata, store)
    assert outcomes(store) == {r.fields["ImageID"]: ["success"] for r in clean_mirror.mirror.rows}


def test_connection_limits_hold_at_the_server(tmp_path: Path, handler: dict[str, str]) -> None:
    served = serve(tmp_path, ("127.0.0.1", "127.0.0.2", "127.0.0.3"), faults=False, copies=3)
    try:
        for route in served.mirror.routes.values():
            route.delay = 0.25
        store = tmp_path / "store"
        run_crawl(served.metadata, store,
                  {"CONCURRENT_REQUESTS": "5", "CONCURRENT_REQUESTS_PER_DOMAIN": "3", **handler})
        counter = served.server.counter
        # The total limit is reached and holds; no host gets more than its share,
        # counted both as requests in flight and as open connections.
        assert counter.in_flight.total_peak == 5
        assert max(counter.in_flight.peak.values()) <= 3
        assert max(counter.connections.peak.values()) <= 3
        served.server.counter.reset_peaks()
        run_crawl(served.metadata, tmp_path / "store2",
                  {"CONCURRENT_REQUESTS": "100", "CONCURRENT_REQUESTS_PER_DOMAIN": "2", **handler})
        assert max(counter.in_flight.peak.values()) == 2
        assert max(counter.connections.peak.values()) == 2
        assert counter.connections.total_peak <= 6
    finally:
        served.server.close()


def route_of(served: Served, row: MirrorRow) -> Route:
    url = row.fields["OriginalURL"]
    split = url.index("/", len("http://"))
    return served.server.routes[(url[:split], url[split:])]


def _slow_mirror(tmp_path: Path, delay: float) -> Served:
    served = serve(tmp_path, faults=False, copies=6)
    for route in served.mirror.routes.values():
        route.delay = delay
    return served


def test_kill_9_then_resume_records_each_row_once_without_redownloads(tmp_path: Path) -> None:
    served = _slow_mirror(tmp_path, 0.15)
    try:
        store = tmp_path / "store"
        settings = {"OPENIMAGES_SAVE_ORIGINALS": "True", "CONCURRENT_REQUESTS": "4",
                    "JOBDIR": str(tmp_path / "job")}
        process = start_crawl(served.metadata, store, settings)
        success = store / "train" / "images-success.csv"
        wait_for(lambda: count_rows(success) >= 12, timeout=90)
        kill(process)
        process.wait(timeout=30)
        # No partial file under a final name: every stored file decodes.
        for path in stored_files(store):
            with Image.open(path) as image:
                image.load()
        done_before = {row["ImageID"] for row in read_csv(success)[1]}
        requests_before = dict(served.server.counter.requests)
        run_crawl(served.metadata, store, settings)
        found = outcomes(store)
        assert found == {r.fields["ImageID"]: ["success"] for r in served.mirror.rows}
        by_id = {r.fields["ImageID"]: r for r in served.mirror.rows}
        for image_id in done_before:
            path = by_id[image_id].fields["OriginalURL"].split("/", 3)[3]
            assert served.server.counter.requests[f"/{path}"] == requests_before[f"/{path}"]
        assert not any((store / ".tmp").glob("*")) if (store / ".tmp").exists() else True
    finally:
        served.server.close()


def _crawl_with_a_hanging_first_row(served: Served, store: Path, grace: float,
                                    handler: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A crawl whose first row hangs for a minute, once a few rows are recorded."""
    route_of(served, served.mirror.rows[0]).delay = 60  # in flight from the start
    settings = {"CONCURRENT_REQUESTS": "4", "DOWNLOAD_TIMEOUT": "120",
                "OPENIMAGES_STOP_GRACE": str(grace), **(handler or {})}
    process = start_crawl(served.metadata, store, settings)
    wait_for(lambda: count_rows(store / "train" / "images-success.csv") >= 3, timeout=90)
    return process


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_stops_within_seconds_and_resume_completes(tmp_path: Path, stop: int, status: int,
                                                          handler: dict[str, str]) -> None:
    served = _slow_mirror(tmp_path, 0.3)
    try:
        store = tmp_path / "store"
        process = _crawl_with_a_hanging_first_row(served, store, grace=1, handler=handler)
        process.send_signal(stop)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=20)
        assert time.monotonic() - started < 15
        assert process.returncode == status  # a stopped run is not a finished one
        (error,) = [line for line in stderr.splitlines() if line.startswith("ERROR:")]
        assert f"stopped by {signal.Signals(stop).name}" in error and "still pending" in error
        assert stderr.splitlines()[-1] == error  # after the summary: the last word
        summary = summary_of(stderr)
        assert summary[0].startswith("Stopped after") and "pending" in summary[0]
        assert summary[-1].startswith("Next: run the same command again to finish")
        partial = outcomes(store)
        assert all(v == ["success"] for v in partial.values())
        assert len(partial) < len(served.mirror.rows)
        # The database: what is stored, and what the stop left pending (the hanging row among them).
        statuses = database_statuses(store)
        assert {image_id for image_id, status in statuses.items() if status == "stored"} == set(partial)
        pending = {image_id for image_id, status in statuses.items() if status == "pending"}
        assert served.mirror.rows[0].fields["ImageID"] in pending and not pending & set(partial)
        # Resume: the rest is done, nothing recorded twice.
        for route in served.server.routes.values():
            route.delay = 0
        run_crawl(served.metadata, store, {"DOWNLOAD_TIMEOUT": "5"})
        final = outcomes(store)
        assert set(final) == {r.fields["ImageID"] for r in served.mirror.rows}
        assert all(len(v) == 1 for v in final.values())
        assert database_statuses(store) == {image_id: "stored" for image_id in final}  # nothing pending now
        import duckdb

        with duckdb.connect(str(store / "openimages.duckdb"), read_only=True) as con:  # no annotations, no failure
            assert [con.execute(sql).fetchall() for sql in readme_queries()] == [[], [], []]
    finally:
        served.server.close()


def database_statuses(store: Path) -> dict[str, str]:
    import duckdb

    with duckdb.connect(str(store / "openimages.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT ImageID, status FROM images").fetchall()
    assert len(rows) == len({image_id for image_id, _ in rows})  # one row an image
    return dict(rows)


def test_second_ctrl_c_stops_at_once_with_whole_result_lines(tmp_path: Path) -> None:
    served = _slow_mirror(tmp_path, 0.3)
    try:
        store = tmp_path / "store"
        process = _crawl_with_a_hanging_first_row(served, store, grace=100)
        process.send_signal(signal.SIGINT)
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        process.wait(timeout=20)
        assert time.monotonic() - started < 10
        written = list(all_results([str(store / "train" / "images-success.csv")]))  # a forced stop may not merge
        assert written and all(path.read_bytes().endswith(b"\n") for path in written)
        assert all(v == ["success"] for v in outcomes(store).values())
    finally:
        served.server.close()


def test_bad_metadata_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageID,Subset,OriginalURL\nabc,train,http://x/y.jpg\n")
    result = subprocess.run(
        [sys.executable, "-m", "scrapy", "crawl", "openimages", "-a", f"metadata={bad}",
         "-s", f"IMAGES_STORE={tmp_path / 'store'}"],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"ERROR: {bad}: missing column(s) OriginalSize, OriginalMD5; "
        "found ImageID, Subset, OriginalURL")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "store" / "train").exists()


@pytest.mark.parametrize(("arguments", "message"), [
    (["-a", "subest=validation"], "unknown argument -a subest; did you mean -a subset?"),
    (["-a", "limit=abc"], "-a limit='abc' is not a whole number"),
    (["-a", "version=9", "-a", "subset=train"], "version 9 is not one of 1, 2, 3, 4, 5, 6, 7"),
    (["-s", "IMAGES_STORE=ftp://host/prefix"], "the ftp:// scheme is not supported"),
])
def test_usage_mistakes_are_one_line_and_exit_2_before_anything_is_written(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    metadata = tmp_path / "images.csv"
    metadata.write_text(",".join(IMAGES_CSV_COLUMNS) + "\n")
    store = tmp_path / "store"
    command = [sys.executable, "-m", "scrapy", "crawl", "openimages", "-s", f"IMAGES_STORE={store}"]
    if "version=9" not in arguments:
        command += ["-a", f"metadata={metadata}"]
    result = subprocess.run(command + arguments, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("ERROR: ")
    assert message in result.stderr.splitlines()[-1]
    assert not store.exists()


def test_demo_checks_every_row_with_an_absolute_folder(tmp_path: Path) -> None:
    folder = tmp_path / "demo"  # absolute: the results are globbed from there
    done = subprocess.run(
        [sys.executable, "-m", "scrapy", "demo", "--dir", str(folder), "--copies", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "recorded exactly once, each with the expected outcome" in done.stdout
    assert (folder / "openimages" / "train" / "images-success.csv").exists()
    # It logs like a tool: short, the summary and where the report is; no framework chatter.
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    assert f"report: {folder / 'openimages' / 'report.html'}" in done.stdout
    assert re.search(r"Crawling \S+images\.csv \(every row\) from original URLs into \S+: images-resized "
                     r"\(ShrinkToFit 224 jpg\), images-original", done.stderr), done.stderr[-2000:]
    for chatter in ("Scrapy 2.", "Overridden settings", "Enabled downloader middlewares", "Dumping Scrapy stats",
                    "DOWNLOAD_FAIL_ON_DATALOSS", "Spider opened"):
        assert chatter not in done.stderr, chatter
    # A second demo finds everything done and prints the same summary.
    again = subprocess.run(
        [sys.executable, "-m", "scrapy", "demo", "--dir", str(folder), "--copies", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    summary = done.stdout[done.stdout.index("Results:"):]
    assert again.stdout[again.stdout.index("Results:"):] == summary


def test_v4_rotation_turns_images_without_exif_once(tmp_path: Path) -> None:
    served = serve(tmp_path, faults=False)
    try:
        rows = [r for r in served.mirror.rows if r.kind in ("jpeg_large", "jpeg_exif_rotated")]
        served.mirror.rows = rows
        for row in rows:
            row.fields["Rotation"] = "90.0"
        metadata = served.mirror.write_metadata(tmp_path / "info.csv", IMAGE_INFO_COLUMNS)
        store = tmp_path / "store"
        run_crawl(metadata, store)
        for row in rows:
            image_id = row.fields["ImageID"]
            with Image.open(store / "train" / "images-resized" / image_id[:3] / f"{image_id}.jpg") as out:
                if row.kind == "jpeg_large":  # 1600x1067, no EXIF: turned by Rotation
                    assert out.size == (149, 224)
                else:  # stored 200x300 with an EXIF turn to landscape: EXIF only
                    assert out.size == (224, 149)
    finally:
        served.server.close()


def test_a_second_crawl_on_a_store_in_use_stops_at_once_naming_the_holder(tmp_path: Path) -> None:
    served = _slow_mirror(tmp_path, 0.3)
    try:
        store = tmp_path / "store"
        first = start_crawl(served.metadata, store, {"CONCURRENT_REQUESTS": "2"})
        wait_for(lambda: count_rows(store / "train" / "images-success.csv") >= 1, timeout=60)
        (tmp_path / "other").mkdir()
        other = serve(tmp_path / "other", ("127.0.0.3",), faults=False)  # the second crawl's own host
        try:
            second = subprocess.run(crawl_command(other.metadata, store), cwd=ROOT, capture_output=True,
                                    text=True, timeout=60)
            assert sum(other.server.counter.requests.values()) == 0  # stopped before any request
        finally:
            other.server.close()
        assert second.returncode == 2
        error = second.stderr.splitlines()[-1]
        assert "is in use by another crawl" in error and f"pid {first.pid}" in error
        kill(first)  # kill -9: the kernel releases the lock
        first.wait(timeout=30)
        run_crawl(served.metadata, store)
        assert all(len(found) == 1 for found in outcomes(store).values())
        assert set(outcomes(store)) == {row.fields["ImageID"] for row in served.mirror.rows}
    finally:
        served.server.close()


def test_private_hosts_are_refused_by_default_without_a_connection(
    clean_mirror: Served, tmp_path: Path, handler: dict[str, str]
) -> None:
    """The mirror is on 127.0.0.1/.2 and a row names `localhost`: with the default setting
    every row is blocked_host, and the mirror sees no request at all."""
    rows = clean_mirror.mirror.rows
    port = rows[0].fields["OriginalURL"].split("/")[2].split(":")[1]
    rows[0].fields["OriginalURL"] = rows[0].fields["OriginalURL"].replace(f"127.0.0.1:{port}", f"localhost:{port}")
    metadata = clean_mirror.mirror.write_metadata(tmp_path / "private.csv")
    store = tmp_path / "store"
    run_crawl(metadata, store, {"OPENIMAGES_BLOCK_PRIVATE_HOSTS": "True", **handler})
    _, failures = read_csv(store / "train" / "images-failure.csv")
    assert {row["ImageID"] for row in failures} == {row.fields["ImageID"] for row in rows}
    assert {row["FailureReason"] for row in failures} == {"blocked_host"}
    details = {row["ImageID"]: row["FailureDetails"] for row in failures}
    assert "localhost is 127.0.0.1, not a public address" in details[rows[0].fields["ImageID"]]
    assert sum(clean_mirror.server.counter.requests.values()) == 0
    assert clean_mirror.server.counter.connections.total_peak == 0


def test_a_compressed_body_that_inflates_past_download_maxsize_is_too_large(
    clean_mirror: Served, tmp_path: Path, handler: dict[str, str]
) -> None:
    bomb = route_of(clean_mirror, clean_mirror.mirror.rows[0])
    bomb.body = gzip.compress(b"\0" * 20_000_000)  # ~20 KB on the wire
    bomb.content_encoding = "gzip"
    store = tmp_path / "store"
    run_crawl(clean_mirror.metadata, store, {"DOWNLOAD_MAXSIZE": "5000000", **handler})
    found = outcomes(store)
    bombed = clean_mirror.mirror.rows[0].fields["ImageID"]
    assert found.pop(bombed) == ["too_large"]
    assert set(map(tuple, found.values())) == {("success",)}


def test_retry_failed_moves_rows_that_now_succeed_and_keeps_every_row_once(
    clean_mirror: Served, tmp_path: Path
) -> None:
    rows = clean_mirror.mirror.rows
    dead, missing = route_of(clean_mirror, rows[0]), route_of(clean_mirror, rows[1])
    dead.status, missing.status = 503, 404
    store = tmp_path / "store"
    run_crawl(clean_mirror.metadata, store)
    first = outcomes(store)
    assert first[rows[0].fields["ImageID"]] == first[rows[1].fields["ImageID"]] == ["http_error"]
    dead.status = missing.status = 200  # both hosts are back
    served_before = sum(clean_mirror.server.counter.requests.values())
    run_crawl(clean_mirror.metadata, store, retry_failed="transient")  # 503 is transient, 404 is not
    assert sum(clean_mirror.server.counter.requests.values()) == served_before + 1
    second = outcomes(store)
    assert second[rows[0].fields["ImageID"]] == ["success"]
    assert second[rows[1].fields["ImageID"]] == ["http_error"]
    run_crawl(clean_mirror.metadata, store, retry_failed="http_error")
    assert outcomes(store) == {row.fields["ImageID"]: ["success"] for row in rows}
    header, failures = read_csv(store / "train" / "images-failure.csv")
    assert failures == [] and header  # rewritten, header kept


def test_a_bad_retry_failed_value_is_a_usage_error(clean_mirror: Served, tmp_path: Path) -> None:
    done = subprocess.run(crawl_command(clean_mirror.metadata, tmp_path / "store", retry_failed="timeouts"),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "-a retry_failed='timeouts': give FailureReason codes or transient" in done.stderr.splitlines()[-1]


def test_a_truncated_gz_crawls_the_rows_before_the_damage_and_exits_non_zero(
    clean_mirror: Served, tmp_path: Path
) -> None:
    base = clean_mirror.mirror.rows[0].fields["OriginalURL"].rsplit("/", 1)[0]
    padding = "".join(  # rows after the images: their URLs answer 404, quickly
        f"{index:016x},train,{base}/gone-{index}.jpg,,,,,,1,XKWUMkcNib71Ge6Yq1/0/g==,\n" for index in range(600))
    packed = gzip.compress(clean_mirror.metadata.read_bytes() + padding.encode())
    cut = tmp_path / "images.csv.gz"
    cut.write_bytes(packed[: len(packed) * 3 // 4])
    store = tmp_path / "store"
    for _ in range(2):  # a rerun does the same, adding nothing
        done = subprocess.run(crawl_command(cut, store), cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1
        error = done.stderr.splitlines()[-1]
        assert "the metadata could not be read to its end" in error and "images.csv.gz: cannot be read after line" in error
        found = outcomes(store)
        assert all(found.pop(row.fields["ImageID"]) == ["success"] for row in clean_mirror.mirror.rows)
        assert 0 < len(found) < 600 and set(map(tuple, found.values())) == {("http_error",)}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs mounted for the test (root only); ``remount`` grows it."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_stops_the_crawl_and_the_rerun_after_freeing_space_completes(
    clean_mirror: Served, small_disk: Path
) -> None:
    store = small_disk / "store"
    settings = {"OPENIMAGES_SAVE_ORIGINALS": "True", "OPENIMAGES_MIN_FREE_BYTES": str(256 * 1024),
                "CONCURRENT_REQUESTS": "2", "OPENIMAGES_WORKERS": "1"}
    stopped = subprocess.run(crawl_command(clean_mirror.metadata, store, settings), cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 1, stopped.stderr[-2000:]
    assert "the store cannot be written" in stopped.stderr.splitlines()[-1]
    # The end-of-run database (a megabyte or two) would cross the floor: it waits for the rerun.
    assert stopped.stderr.count("attribution files are not updated") == 1
    assert not (store / "openimages.duckdb").exists()
    first = outcomes(store)
    assert 0 < len(first) < len(clean_mirror.mirror.rows)
    assert set(map(tuple, first.values())) == {("success",)}  # no io_error row
    for path in stored_files(store):
        with Image.open(path) as image:
            image.load()
    served = dict(clean_mirror.server.counter.requests)
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)  # space freed
    run_crawl(clean_mirror.metadata, store, settings)
    assert outcomes(store) == {row.fields["ImageID"]: ["success"] for row in clean_mirror.mirror.rows}
    assert (store / "openimages.duckdb").is_file()  # brought up to date once there is room
    by_id = {row.fields["ImageID"]: row.fields["OriginalURL"] for row in clean_mirror.mirror.rows}
    for image_id in first:  # stored before the stop: not downloaded again
        path = "/" + by_id[image_id].split("/", 3)[3]
        assert clean_mirror.server.counter.requests[path] == served[path]


def test_an_unclosed_quote_and_an_over_long_field_mid_file_cost_one_row_each(
    clean_mirror: Served, tmp_path: Path
) -> None:
    lines = clean_mirror.metadata.read_text(encoding="utf-8").split("\n")
    header = lines[0].split(",")
    width = len(header)
    hostile = [
        "quote0000000001,train,http://x.invalid/a.jpg,1,XKWUMkcNib71Ge6Yq1/0/g==," + '"never closed' + "," * (width - 6),
        "long00000000001,train,http://x.invalid/b.jpg,1,XKWUMkcNib71Ge6Yq1/0/g==," + "L" * 3_000_000 + "," * (width - 6),
    ]
    middle = len(lines) // 2
    metadata = tmp_path / "hostile.csv"
    metadata.write_text("\n".join(lines[:middle] + hostile + lines[middle:]), encoding="utf-8")
    store = tmp_path / "store"
    run_crawl(metadata, store)
    found = outcomes(store)
    assert found.pop("quote0000000001") == found.pop("long00000000001") == ["invalid_row"]
    assert found == {row.fields["ImageID"]: ["success"] for row in clean_mirror.mirror.rows}
    details = {row["ImageID"]: row["FailureDetails"] for row in read_csv(store / "train" / "images-failure.csv")[1]}
    assert details == {"quote0000000001": "a quoted field is still open after 1048576 bytes",
                       "long00000000001": "row longer than 1048576 bytes"}
