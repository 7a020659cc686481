"""Container outputs (``outputs.containers``) without a crawler: packs written,
numbered and published, read back by the real reader libraries (webdataset,
pyarrow, the tfrecord package), and mended after a kill between the steps of
a publication."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from PIL import Image

from openimages_crawler.checkpoint.pending import PendingRows
from openimages_crawler.dataset.rows import ImageRow
from openimages_crawler.outputs.containers import (
    MANIFEST,
    PackSink,
    read_manifest,
    write_index,
)
from openimages_crawler.store.base import Store, StoreOptions
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.objects import ObjectStore
from openimages_crawler.testing.objects import S3Server


def jpeg(seed: int, size: tuple[int, int] = (8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (seed % 256, 40, 90)).save(out, "JPEG")
    return out.getvalue()


def image_row(image_id: str, subset: str = "train") -> ImageRow:
    fields = {"ImageID": image_id, "Subset": subset, "OriginalURL": f"https://example.com/{image_id}.jpg",
              "Title": f"photo, \"{image_id}\""}
    return ImageRow(image_id=image_id, url=fields["OriginalURL"], size=0, md5=b"", subset=subset,
                    fields=fields)


def ids(count: int, start: int = 0) -> list[str]:
    return [f"{number:016x}" for number in range(start, start + count)]


def local_lock(root: Path) -> Callable[[str], AbstractContextManager[None]]:
    store = LocalStore(str(root))
    return lambda name: store.shared(root, name)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    found = LocalStore(str(tmp_path / "store"))
    found.open()
    yield found
    found.close()


def sink_for(store: LocalStore, tmp_path: Path, container: str, size: int = 3, name: str = "a") -> PackSink:
    return PackSink(store, tmp_path / f"scratch-{name}", "crop", container, size, local_lock(store.root))


def fill(sink: PackSink, image_ids: list[str]) -> dict[str, str]:
    return {image_id: sink.write(image_row(image_id), "jpg", jpeg(n), (8, 6)) for n, image_id in enumerate(image_ids)}


def manifest(store: Store, base: str = "train/crop") -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(store.read(f"{base}/{MANIFEST}").decode(), newline="")))


def test_webdataset_packs_read_back_with_the_webdataset_package(store: LocalStore, tmp_path: Path) -> None:
    import webdataset as wds

    sink = sink_for(store, tmp_path, "webdataset")
    written = ids(7)
    tickets = fill(sink, written)
    assert len(sink.released()) == 2  # two full packs published while writing
    sink.close()
    assert len(sink.released()) == 1  # the last, smaller one, at close
    folder = store.root / "train" / "crop"
    assert sorted(path.name for path in folder.glob("*.tar")) == ["000000.tar", "000001.tar", "000002.tar"]
    rows = manifest(store)
    assert [(row["shard"], row["count"], row["first_image_id"], row["last_image_id"]) for row in rows] == [
        ("000000.tar", "3", written[0], written[2]), ("000001.tar", "3", written[3], written[5]),
        ("000002.tar", "1", written[6], written[6])]
    for row in rows:
        data = (folder / row["shard"]).read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["bytes"] == str(len(data))
    assert len(set(tickets.values())) == 3
    samples = list(wds.WebDataset([str(folder / row["shard"]) for row in rows], shardshuffle=False))
    assert [sample["__key__"] for sample in samples] == written
    for number, sample in enumerate(samples):
        assert sample["jpg"] == jpeg(number)
        meta = json.loads(sample["json"])
        assert meta["ImageID"] == written[number] and meta["Title"] == f"photo, \"{written[number]}\""
        assert (meta["width"], meta["height"]) == (8, 6)
    assert not list((tmp_path / "scratch-a").glob("*"))  # published by renames


def test_parquet_packs_read_back_with_pyarrow_and_pandas(store: LocalStore, tmp_path: Path) -> None:
    import pandas as pd
    import pyarrow.parquet as pq

    sink = sink_for(store, tmp_path, "parquet", size=5)
    written = ids(5)
    fill(sink, written)
    sink.close()
    path = store.root / "train" / "crop" / "000000.parquet"
    table = pq.read_table(path)
    assert table.column_names[:5] == ["ImageID", "image", "format", "width", "height"]
    assert {"Subset", "OriginalURL", "Title"} <= set(table.column_names)
    frame = pd.read_parquet(path)
    assert frame["ImageID"].tolist() == written
    assert [bytes(data) for data in frame["image"]] == [jpeg(n) for n in range(5)]
    assert set(frame["format"]) == {"jpg"} and set(frame["width"]) == {8} and set(frame["height"]) == {6}
    with Image.open(io.BytesIO(frame["image"][0])) as image:
        assert image.size == (8, 6)


def test_tfrecord_packs_read_back_without_tensorflow(store: LocalStore, tmp_path: Path) -> None:
    from tfrecord.reader import tfrecord_loader

    sink = sink_for(store, tmp_path, "tfrecord", size=4)
    written = ids(4)
    fill(sink, written)
    sink.close()
    records = list(tfrecord_loader(str(store.root / "train" / "crop" / "000000.tfrecord"), None))
    assert [bytes(record["image/source_id"]).decode() for record in records] == written
    for number, record in enumerate(records):
        assert bytes(record["image/encoded"]) == jpeg(number)
        assert bytes(record["image/format"]) == b"jpg"
        assert (int(record["image/width"][0]), int(record["image/height"][0])) == (8, 6)
        assert bytes(record["openimages/Title"]).decode() == f"photo, \"{written[number]}\""


def test_processes_writing_one_output_number_their_packs_without_gaps(store: LocalStore, tmp_path: Path) -> None:
    sinks = [sink_for(store, tmp_path, "webdataset", size=2, name=str(n)) for n in range(4)]
    threads = [threading.Thread(target=fill, args=(sink, ids(5, start=100 * n))) for n, sink in enumerate(sinks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for sink in sinks:
        sink.close()
    rows = manifest(store)
    assert [row["shard"] for row in rows] == [f"{n:06d}.tar" for n in range(12)]  # 4 x (2 + 2 + 1)
    held = [image_id for row in rows for image_id in (store.root / "train" / "crop" / ".index" /
                                                       f"{row['shard'][:6]}.ids").read_text().split()]
    assert sorted(held) == sorted(image_id for n in range(4) for image_id in ids(5, start=100 * n))
    reader = sink_for(store, tmp_path, "webdataset", name="reader")
    assert all(reader.holds(image_row(image_id), "jpg") for image_id in held)
    assert not reader.holds(image_row(ids(1, start=999)[0]), "jpg")
    assert not reader.holds(image_row(held[0], subset="validation"), "jpg")


def test_a_kill_between_the_steps_of_a_publication_is_mended(store: LocalStore, tmp_path: Path) -> None:
    sink = sink_for(store, tmp_path, "webdataset", size=2)
    fill(sink, ids(2))
    base = "train/crop"
    # Killed after the pack went in, before its manifest row: the next look adds the row.
    fill(sink, ids(2, start=10))
    text = store.read(f"{base}/{MANIFEST}").decode()
    store.write(f"{base}/{MANIFEST}", text.rsplit("\n", 2)[0].encode() + b"\n")
    assert [row["shard"] for row in read_manifest(store, base)] == ["000000.tar", "000001.tar"]
    assert read_manifest(store, base)[1]["first_image_id"] == ids(1, start=10)[0]
    # Killed after the index, before the pack: the index is overwritten by the next pack.
    write_index(store, base, "000002.tar", tuple(ids(2, start=50)))
    fill(sink, ids(2, start=20))
    rows = manifest(store)
    assert [row["shard"] for row in rows] == ["000000.tar", "000001.tar", "000002.tar"]
    assert rows[2]["first_image_id"] == ids(1, start=20)[0]
    reader = sink_for(store, tmp_path, "webdataset", name="reader")
    assert not reader.holds(image_row(ids(1, start=50)[0]), "jpg")


def test_packs_into_a_bucket_take_numbers_under_its_lease(s3: S3Server, tmp_path: Path) -> None:
    import webdataset as wds

    bucket = ObjectStore(f"s3://data/packs-{uuid.uuid4().hex[:8]}", StoreOptions(
        access_key_id=s3.access_key, secret_access_key=s3.secret_key, endpoint_url=s3.endpoint,
        region_name="us-east-1"))
    records = tmp_path / "work"

    def lock(name: str) -> AbstractContextManager[None]:
        return bucket.shared(records, name)

    sinks = [PackSink(bucket, tmp_path / f"scratch{n}", "crop", "webdataset", 2, lock) for n in range(2)]
    for n, sink in enumerate(sinks):
        fill(sink, ids(3, start=10 * n))
    for sink in sinks:
        sink.close()
    rows = manifest(bucket)
    assert [row["shard"] for row in rows] == [f"{n:06d}.tar" for n in range(4)]
    assert not [key for key in bucket.list("") if key.startswith(".locks/")]
    local = tmp_path / "read"
    local.mkdir()
    for row in rows:
        bucket.download(f"train/crop/{row['shard']}", local / row["shard"])
    keys = [sample["__key__"] for sample in wds.WebDataset(sorted(map(str, local.glob("*.tar"))), shardshuffle=False)]
    assert sorted(keys) == sorted(ids(3) + ids(3, start=10))


def test_pending_rows_are_ready_once_all_their_packs_are_published() -> None:
    pending: PendingRows[str] = PendingRows()
    assert pending.add("a", ["crop#1", "fit#1"])
    assert pending.add("b", ["crop#1"])
    pending.publish(["crop#1"])
    assert pending.take_ready() == ["b"] and len(pending) == 1
    pending.publish(["fit#1"])
    assert pending.take_ready() == ["a"] and not pending.take_ready()
    pending.publish(["crop#2"])  # published before its row was added (another worker closed it)
    assert not pending.add("c", ["crop#2"])
    assert len(pending) == 0


def test_containers_are_chosen_per_output_and_checked_before_the_crawl() -> None:
    from scrapy.exceptions import UsageError

    from openimages_crawler.crawl.config import CrawlConfig
    from tests.conftest import project_settings

    config = CrawlConfig.from_settings(project_settings({
        "IMAGES_STORE": "/tmp/x", "OPENIMAGES_RESIZE_CONTAINER": "parquet", "OPENIMAGES_SHARD_SIZE": 50,
        "OPENIMAGES_ORIGINALS_CONTAINER": "TFRecord",
        "OPENIMAGES_OUTPUTS": [{"dir": "a", "mode": "FillCrop", "size": 8},
                               {"dir": "b", "mode": "FillCrop", "size": 8, "container": "files"}]}))
    assert [output.container for output in config.outputs] == ["parquet", "files"]  # the setting is the default
    assert (config.originals_container, config.pack_size) == ("tfrecord", 50)
    for values, message in (
        ({"OPENIMAGES_RESIZE_CONTAINER": "zip"}, "OPENIMAGES_RESIZE_CONTAINER must be one of files, webdataset, "
                                                 "parquet, tfrecord, not 'zip'"),
        ({"OPENIMAGES_OUTPUTS": [{"dir": "a", "mode": "FillCrop", "size": 8, "container": "tar"}]},
         "OPENIMAGES_OUTPUTS entry .*: container must be one of"),
        ({"OPENIMAGES_ORIGINALS_CONTAINER": "hdf5"}, "OPENIMAGES_ORIGINALS_CONTAINER must be one of"),
        ({"OPENIMAGES_SHARD_SIZE": 0}, "OPENIMAGES_SHARD_SIZE must be 1 or more"),
    ):
        with pytest.raises(UsageError, match=message):
            CrawlConfig.from_settings(project_settings({"IMAGES_STORE": "/tmp/x", **values}))



def annotations_of(number: int) -> dict[str, list[dict[str, object]]]:
    """Labels and boxes as ``SampleAnnotations`` gives them (an image without boxes for odd numbers)."""
    label = {"LabelName": "/m/01g317", "DisplayName": "Person", "ClassIndex": 7, "Source": "verification",
             "Confidence": 1.0}
    boxes = [] if number % 2 else [
        {**label, "Source": "freeform", "XMin": 0.1 * k, "XMax": 0.1 * k + 0.25, "YMin": 0.5, "YMax": 0.75,
         "IsOccluded": 0, "IsTruncated": 1, "IsGroupOf": -1, "IsDepiction": 0, "IsInside": 0} for k in range(3)]
    return {"labels": [label, {**label, "LabelName": "/m/0k4j", "DisplayName": "Car", "ClassIndex": 9,
                                "Confidence": 0.0}], "boxes": boxes}


@pytest.mark.parametrize("container", ["webdataset", "parquet", "tfrecord"])
def test_samples_carry_their_labels_and_boxes(store: LocalStore, tmp_path: Path, container: str) -> None:
    sink = sink_for(store, tmp_path, container, size=4)
    written = ids(4)
    for number, image_id in enumerate(written):
        sink.write(image_row(image_id), "jpg", jpeg(number), (8, 6), annotations_of(number))
    sink.close()
    pack = store.root / "train" / "crop" / read_manifest(store, "train/crop")[0]["shard"]
    if container == "webdataset":
        import webdataset as wds

        for number, sample in enumerate(wds.WebDataset(str(pack), shardshuffle=False)):
            meta = json.loads(sample["json"])
            assert {"labels": meta["labels"], "boxes": meta["boxes"]} == annotations_of(number)
    elif container == "parquet":
        import pandas as pd
        import pyarrow.parquet as pq

        rows = pq.read_table(pack).to_pylist()
        for number, row in enumerate(rows):
            assert {"labels": row["labels"], "boxes": row["boxes"]} == annotations_of(number)
        frame = pd.read_parquet(pack)
        assert [len(boxes) for boxes in frame["boxes"]] == [3, 0, 3, 0]
    else:
        from tfrecord.reader import tfrecord_loader

        for number, record in enumerate(tfrecord_loader(str(pack), None)):
            expected = annotations_of(number)
            boxes = expected["boxes"]
            for key in ("XMin", "XMax", "YMin", "YMax"):
                assert list(record.get(f"image/object/bbox/{key.lower()}", [])) == pytest.approx(
                    [box[key] for box in boxes])
            assert list(record.get("image/object/class/label", [])) == [box["ClassIndex"] for box in boxes]
            assert list(record.get("image/object/truncated", [])) == [box["IsTruncated"] for box in boxes]
            assert list(record["image/class/label"]) == [7, 9]
            assert list(record["image/class/confidence"]) == [1.0, 0.0]
        # The package's reader keeps the first value of a bytes list: read the protobufs themselves.
        from tfrecord import example_pb2
        from tfrecord.reader import tfrecord_iterator

        for number, raw in enumerate(tfrecord_iterator(str(pack))):
            example = example_pb2.Example()
            example.ParseFromString(raw)
            feature = example.features.feature
            texts = list(feature["image/object/class/text"].bytes_list.value)
            assert texts == [b"Person"] * len(annotations_of(number)["boxes"])
            assert list(feature["image/class/text"].bytes_list.value) == [b"Person", b"Car"]
