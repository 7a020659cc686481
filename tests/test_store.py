"""The store interface on a local folder, and the per-row resume planner (pure)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from openimages_crawler.checkpoint.ledger import ResultsLedger
from openimages_crawler.checkpoint.planner import PlannedOutput, RowPlan, RowPlanner
from openimages_crawler.checkpoint.results import FailureRow, SuccessRow
from openimages_crawler.dataset.idset import IdSet
from openimages_crawler.dataset.rows import ImageRow, InvalidRow, validate_row
from openimages_crawler.dataset.source import ImageSource
from openimages_crawler.outputs.sinks import FilesSink
from openimages_crawler.store import (
    STORE_SCHEMES,
    LocalStore,
    UnsupportedStore,
    open_store,
)
from openimages_crawler.store.base import ObjectTooLarge
from openimages_crawler.store.gcs import GcsStore
from openimages_crawler.store.layout import StoreLayout
from openimages_crawler.store.objects import ObjectStore

BODY = b"\xff\xd8 not really a jpeg"


def test_the_scheme_picks_the_store(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path), STORE_SCHEMES), LocalStore)
    assert open_store(f"file://{tmp_path}", STORE_SCHEMES).root == tmp_path  # type: ignore[attr-defined]
    assert open_store("relative/folder", STORE_SCHEMES).root == Path("relative/folder")  # type: ignore[attr-defined]
    assert type(open_store("s3://bucket/prefix", STORE_SCHEMES)) is ObjectStore
    assert type(open_store("gs://bucket", STORE_SCHEMES)) is GcsStore
    for uri in ("ftp://host/x", "http://host/x"):
        with pytest.raises(UnsupportedStore, match=f"the {uri.split(':')[0]}:// scheme is not supported"):
            open_store(uri, STORE_SCHEMES)


def test_the_local_store_reads_writes_lists_and_speaks_scrapys_protocol(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    store.open()
    store.write("train/a/1.jpg", b"one")
    with store.writing("train/annotations.csv") as out:
        out.write(b"ImageID\n")
        assert not (tmp_path / "train" / "annotations.csv").exists()  # only when complete
    store.write("validation/b/2.jpg", b"two")
    assert store.read("train/a/1.jpg") == b"one" == store.read("train/a/1.jpg", 3)
    with pytest.raises(ObjectTooLarge, match="larger than 2 bytes"):
        store.read("train/a/1.jpg", 2)
    assert store.stat("train/annotations.csv") == 8 and store.stat("train/missing.jpg") is None
    assert sorted(store.list("train")) == ["train/a/1.jpg", "train/annotations.csv"]
    (tmp_path / "top.txt").write_text("x")
    assert "top.txt" in set(store.list(""))
    assert store.request_uri("train/a/1.jpg") == (tmp_path / "train" / "a" / "1.jpg").resolve().as_uri()
    with pytest.raises(RuntimeError), store.writing("train/broken.csv") as out:
        out.write(b"half")
        raise RuntimeError
    assert store.stat("train/broken.csv") is None  # a failed stream leaves nothing
    store.close()
    assert not (tmp_path / ".tmp").exists()


def test_a_folder_store_is_its_own_records_copy(tmp_path: Path) -> None:
    """Nothing moves between a folder store and its records folder (itself),
    and its writes need no threads of their own."""
    store = LocalStore(str(tmp_path))
    records = store.records(str(tmp_path / "ignored-work-folder"))
    assert records is store and store.write_threads == 0
    assert not store.fetch_copy(records, "train/annotations.csv")
    store.open()
    store.write("train/annotations.csv", b"rows")
    assert store.fetch_copy(records, "train/annotations.csv")
    store.send_copy(records, records.path("train/annotations.csv"))
    assert store.read("train/annotations.csv") == b"rows"
    store.close()
    assert sorted(store.list("")) == ["train/annotations.csv"]


@pytest.mark.parametrize("key", ["../../../../etc/passwd", "train/../../outside.txt", "..", "/etc/passwd"])
def test_the_local_store_refuses_a_key_outside_its_folder(tmp_path: Path, key: str) -> None:
    (tmp_path / "outside.txt").write_text("not the store's")
    store = LocalStore(str(tmp_path / "store"))
    for use in (store.path, store.read, store.stat, lambda key: store.write(key, b"x")):
        with pytest.raises(ValueError, match="is not a key inside the store"):
            use(key)
    assert (tmp_path / "outside.txt").read_text() == "not the store's"
    assert store.path("train/a..b/c.jpg") == tmp_path / "store" / "train" / "a..b" / "c.jpg"


def row(image_id: str = "0123456789abcdef", url: str = "https://farm1.example/x.jpg") -> ImageRow:
    fields = {
        "ImageID": image_id, "Subset": "train", "OriginalURL": url, "OriginalSize": str(len(BODY)),
        "OriginalMD5": base64.b64encode(hashlib.md5(BODY).digest()).decode(),
    }
    checked = validate_row(fields, None, None)
    assert isinstance(checked, ImageRow)
    return checked


def planner(store: LocalStore, *, succeeded: tuple[str, ...] = (), failed: tuple[str, ...] = (),
            save_originals: bool = False, source: ImageSource | None = None) -> RowPlanner:
    layout = StoreLayout()
    outputs = (PlannedOutput("small", FilesSink(store, layout, "small"), "jpg"),
               PlannedOutput("big", FilesSink(store, layout, "big"), "webp"))
    return RowPlanner(ResultsLedger(IdSet(succeeded), IdSet(failed)), store, layout, outputs, source or ImageSource(),
                      save_originals=save_originals, check_md5_if_exists=True)


def test_the_planner_decides_each_row_from_the_ledger_and_the_store(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    store.open()
    image = row()
    invalid = InvalidRow({"ImageID": image.image_id, "Subset": "train"}, "train", "bad MD5")
    assert isinstance(planner(store).plan(invalid), FailureRow)
    assert planner(store, failed=(image.image_id,)).plan(invalid) is None  # recorded once already
    assert planner(store, failed=(image.image_id,)).plan(image) is None
    fetch = planner(store).plan(image)
    assert isinstance(fetch, RowPlan)
    assert (fetch.url, fetch.verified, fetch.from_store, fetch.recorded) == (image.url, True, False, False)
    assert fetch.outputs == ("small", "big")
    assert fetch.original == "train/images-original/012/0123456789abcdef.jpg"
    store.write("train/small/012/0123456789abcdef.jpg", b"x")
    assert planner(store).plan(image).outputs == ("big",)  # each output resumes on its own
    store.write("train/big/012/0123456789abcdef.webp", b"x")
    assert isinstance(planner(store).plan(image), SuccessRow)  # complete: recorded without download
    assert planner(store, succeeded=(image.image_id,)).plan(image) is None


def test_stored_originals_are_read_back_instead_of_downloaded(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    store.open()
    image = row()
    original = "train/images-original/012/0123456789abcdef.jpg"
    store.write(original, BODY[:-1])  # the wrong size: downloaded again
    assert planner(store, save_originals=True).plan(image).from_store is False
    store.write(original, BODY)
    rebuild = planner(store, save_originals=True).plan(image)
    assert rebuild.from_store and rebuild.keep_original and rebuild.outputs == ("small", "big")
    assert rebuild.fetch_instead().from_store is False
    for name in ("small/012/0123456789abcdef.jpg", "big/012/0123456789abcdef.webp"):
        store.write(f"train/{name}", b"x")
    check = planner(store, save_originals=True).plan(image)  # not recorded: its MD5 is checked once
    assert check.from_store and check.outputs == ()
    assert planner(store, succeeded=(image.image_id,), save_originals=True).plan(image) is None


def test_other_sources_are_not_checked_against_the_metadata(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    cvdf = planner(store, source=ImageSource("cvdf", "https://cvdf.example")).plan(row())
    assert (cvdf.url, cvdf.verified, cvdf.record_download) == (
        "https://cvdf.example/train/0123456789abcdef.jpg", False, True)
    image = row(url="https://farm1.example/x.png")
    assert planner(store).plan(image).original.endswith("/0123456789abcdef.png")
    # The original is kept, and looked for, under OriginalURL's extension whatever the source.
    store.open()
    store.write("train/images-original/012/0123456789abcdef.png", b"a rescaled copy")
    for name in ("small/012/0123456789abcdef.jpg", "big/012/0123456789abcdef.webp"):
        store.write(f"train/{name}", b"x")
    kept = planner(store, save_originals=True, source=ImageSource("cvdf", "https://cvdf.example")).plan(image)
    assert kept.from_store and kept.url.endswith(".jpg") and kept.original.endswith(".png")


def test_the_store_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    import os

    from openimages_crawler.store.lock import StoreLock, StoreLocked

    first, second = StoreLock(tmp_path), StoreLock(tmp_path)
    first.acquire()
    with pytest.raises(StoreLocked, match=f"is in use by another crawl \\(host .*, pid {os.getpid()}, since "):
        second.acquire()
    first.release()
    second.acquire()  # free again once released (the kernel also releases it when a process dies)
    second.release()


def test_reconcile_drops_failures_of_stored_images_and_keeps_the_last_of_a_repeated_one(tmp_path: Path) -> None:
    from openimages_crawler.checkpoint.ledger import ResultsLedger, reconcile
    from openimages_crawler.dataset.retry import RetryFilter

    train = tmp_path / "train"
    train.mkdir()
    (train / "images-success.csv").write_bytes(b"ImageID,Title\r\na,x\r\n")
    (train / "images-failure.csv").write_bytes(
        b'ImageID,Title,FailureReason,FailureDetails\r\n'
        b'a,x,timeout,TimeoutError\r\n'  # stored since: leaves
        b'b,"two\r\nlines",http_error,HTTP 503 after 3 retries\r\n'  # recorded again below: the last stays
        b'c,y,http_error,HTTP 404\r\n'
        b'b,"two\r\nlines",http_error,HTTP 404\r\n'
    )
    files = {"success": [str(tmp_path / "*" / "images-success.csv")],
             "failure": [str(tmp_path / "*" / "images-failure.csv")]}
    ledger = ResultsLedger.load(files, ["ImageID", "Title"], RetryFilter.parse("transient"))
    assert ledger.needs_reconcile
    assert "c" in ledger.failed and "b" in ledger.retrying  # one of b's rows is a 503
    assert ledger.described(True) == "Already recorded: 1 successes, 3 failures (2 of them tried again)"
    assert ResultsLedger.load({"success": [], "failure": []}, ["ImageID", "Title"]).described(False) == ""
    store = LocalStore(str(tmp_path))
    store.open()
    assert reconcile(files, store) == 2
    assert (train / "images-failure.csv").read_bytes() == (
        b'ImageID,Title,FailureReason,FailureDetails\r\n'
        b'c,y,http_error,HTTP 404\r\n'
        b'b,"two\r\nlines",http_error,HTTP 404\r\n'
    )
    assert not ResultsLedger.load(files, ["ImageID", "Title"]).needs_reconcile
    assert reconcile(files, store) == 0  # nothing left to mend: the file is not rewritten


def test_retry_failed_names_codes_or_transient() -> None:
    from openimages_crawler.dataset.retry import RetryFilter

    transient = RetryFilter.parse("transient")
    assert transient.matches("timeout", "") and transient.matches("connection", "refused")
    assert transient.matches("http_error", "HTTP 503 after 3 retries") and transient.matches("http_error", "HTTP 429")
    assert not transient.matches("http_error", "HTTP 404") and not transient.matches("md5_mismatch", "")
    both = RetryFilter.parse("md5_mismatch, http_error")
    assert both.matches("http_error", "HTTP 404") and both.matches("md5_mismatch", "") and not both.matches("timeout", "")
    for bad in ("", "timeouts", "transient,nope"):
        with pytest.raises(ValueError, match="give FailureReason codes or transient"):
            RetryFilter.parse(bad)
