"""The object store (s3://, gs://) against a real S3-protocol server on
127.0.0.1 (moto's, started here), checked with boto3's own listings."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

from openimages_crawler.store import open_store
from openimages_crawler.store.base import ObjectTooLarge, StoreOptions, writing_text
from openimages_crawler.store.gcs import GcsStore
from openimages_crawler.store.objects import (
    CHECK_ATTEMPTS,
    ObjectStore,
    StoreUnavailable,
    split_uri,
)
from openimages_crawler.testing.objects import S3Server, start_s3_server
from openimages_crawler.testing.scrapyd import free_port


@pytest.fixture
def server(s3: S3Server) -> S3Server:
    return s3


def options_for(server: S3Server, **overrides: object) -> StoreOptions:
    values: dict[str, object] = {"access_key_id": server.access_key, "secret_access_key": server.secret_key,
                                 "endpoint_url": server.endpoint, "region_name": "us-east-1", **overrides}
    return StoreOptions(**values)  # type: ignore[arg-type]


def counted(store: ObjectStore) -> Counter[str]:
    """Every request the store's client sends, by operation."""
    calls: Counter[str] = Counter()
    store.client.meta.events.register("before-call.s3.*", lambda model, **_: calls.update([model.name]))
    return calls


def keys_in(server: S3Server, prefix: str) -> dict[str, int]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket="data", Prefix=prefix)
    return {entry["Key"]: entry["Size"] for page in pages for entry in page.get("Contents", ())}


def test_uris_name_a_bucket_and_a_prefix() -> None:
    assert split_uri("s3://data/sets/oi") == ("data", "sets/oi/")
    assert split_uri("s3://data/sets/oi/") == ("data", "sets/oi/")
    assert split_uri("s3://data") == ("data", "")
    with pytest.raises(ValueError, match="names no bucket"):
        split_uri("s3:///nothing")


def test_objects_keep_the_layout_under_the_prefix(server: S3Server) -> None:
    store = open_store("s3://data/run1", {"s3": ObjectStore}, options_for(server))
    store.open()
    store.write("train/224/abc/abc123.jpg", b"jpeg bytes")
    with writing_text(store, "train/images-success.csv") as out:
        out.write("ImageID\r\nabc123\r\n")
    assert keys_in(server, "run1/") == {"run1/train/224/abc/abc123.jpg": 10, "run1/train/images-success.csv": 17}
    assert store.read("train/images-success.csv") == b"ImageID\r\nabc123\r\n"
    assert sorted(store.list("train")) == ["train/224/abc/abc123.jpg", "train/images-success.csv"]
    assert store.stat("train/224/abc/abc123.jpg") == 10
    assert store.stat("train/224/abc/missing.jpg") is None
    assert store.free_bytes() is None
    # A bounded read: the object whole within its bound, else ObjectTooLarge after at most most + 1 bytes.
    assert store.read("train/224/abc/abc123.jpg", 10) == b"jpeg bytes"
    with pytest.raises(ObjectTooLarge, match="larger than 9 bytes"):
        store.read("train/224/abc/abc123.jpg", 9)


def test_threads_writing_at_once_share_one_client(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every upload thread's first write asks for the client at once: one is made
    (each costs a tenth of a second of CPU; 32 at once stalled a crawl's start)."""
    store = open_store("s3://data/one-client", {"s3": ObjectStore}, options_for(server))
    made: list[int] = []
    real = ObjectStore._new_client

    def counting(self: ObjectStore, attempts: int) -> object:
        made.append(attempts)
        return real(self, attempts)

    monkeypatch.setattr(ObjectStore, "_new_client", counting)
    start = threading.Barrier(16)

    def write(number: int) -> None:
        start.wait()
        store.write(f"train/{number}.jpg", b"jpeg")

    threads = [threading.Thread(target=write, args=(number,)) for number in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1 and len(keys_in(server, "one-client/")) == 16


def test_stat_answers_a_folder_from_one_listing(server: S3Server) -> None:
    writer = ObjectStore("s3://data/listed", options_for(server))
    for number in range(30):
        writer.write(f"train/224/f00/{number:04d}.jpg", b"x" * (number + 1))
    store = ObjectStore("s3://data/listed", options_for(server))
    calls = counted(store)
    sizes = [store.stat(f"train/224/f00/{number:04d}.jpg") for number in range(40)]
    assert sizes == [number + 1 for number in range(30)] + [None] * 10
    assert calls == {"ListObjectsV2": 2}  # the output's folders, then the one folder: no HEAD per row
    store.write("train/224/f00/0035.jpg", b"new")  # its own writes are seen without listing again
    assert store.stat("train/224/f00/0035.jpg") == 3
    assert calls == {"ListObjectsV2": 2, "PutObject": 1}
    # Folders the output's listing does not name are not listed: a fresh store costs one listing.
    assert [store.stat(f"train/224/{prefix:03x}/x.jpg") for prefix in range(100)] == [None] * 100
    assert calls["ListObjectsV2"] == 2
    store.write("train/224/001/x.jpg", b"later")
    assert store.stat("train/224/001/x.jpg") == 5


def test_a_listing_holds_only_its_folder(server: S3Server) -> None:
    store = ObjectStore("s3://data/nested", options_for(server))
    store.write("train/224/abc/deep/x.jpg", b"deep")
    store.write("train/224/abc/x.jpg", b"flat")
    assert store.stat("train/224/abc/x.jpg") == 4
    assert store.stat("train/224/abc/deep") is None  # a "folder" is not an object


def test_big_objects_go_up_in_parts_and_appear_whole(server: S3Server) -> None:
    store = ObjectStore("s3://data/big", options_for(server, multipart_bytes=5 * 1024 * 1024))
    data = os.urandom(12 * 1024 * 1024)
    calls = counted(store)
    store.write("train/images-original/big.jpg", data)
    assert calls["CreateMultipartUpload"] == 1 and calls["CompleteMultipartUpload"] == 1
    assert store.read("train/images-original/big.jpg") == data
    assert store.stat("train/images-original/big.jpg") == len(data)


def test_a_stream_that_fails_leaves_no_object(server: S3Server) -> None:
    store = ObjectStore("s3://data/stream", options_for(server))
    with pytest.raises(RuntimeError):
        with store.writing("train/images-failure.csv") as out:
            out.write(b"half a file")
            raise RuntimeError("killed while writing")
    assert keys_in(server, "stream/") == {}


def test_a_missing_bucket_is_one_clear_error(server: S3Server) -> None:
    store = ObjectStore("s3://no-such-bucket/x", options_for(server))
    with pytest.raises(StoreUnavailable, match=r"^s3://no-such-bucket/x: the bucket does not exist$"):
        store.open()


def test_an_unreachable_endpoint_is_one_clear_error() -> None:
    store = ObjectStore("s3://data/x", StoreOptions(access_key_id="a", secret_access_key="b",
                                                   endpoint_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(StoreUnavailable, match="the endpoint cannot be reached"):
        store.open()


def test_the_check_at_start_tries_twice_not_as_often_as_the_crawls_requests() -> None:
    """An endpoint that hangs up on every connection: the check gives up after its two
    tries, while a request of the crawl goes on to its ``attempts`` (3 here, 5 by default)."""
    accepted: list[int] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def hang_up() -> None:
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return
                accepted.append(1)
                connection.close()

        threading.Thread(target=hang_up, daemon=True).start()
        port = listener.getsockname()[1]
        store = ObjectStore("s3://data/x", StoreOptions(access_key_id="a", secret_access_key="b",
                                                       endpoint_url=f"http://127.0.0.1:{port}", attempts=3))
        with pytest.raises(StoreUnavailable):
            store.open()
        by_check = len(accepted)
        with pytest.raises(OSError):
            store.read("any")
        by_request = len(accepted) - by_check
    assert by_request - by_check == store.options.attempts - CHECK_ATTEMPTS == 1


def test_refused_credentials_are_one_clear_error(tmp_path: Path) -> None:
    server = start_s3_server(tmp_path / "s3", authenticated=True)
    try:
        server.make_bucket("data")  # with the one accepted key pair
        # The bucket's root: moto 5.2's signature check fails any query with an encoded "/"
        # (a listing of prefix "x/"), whatever the key pair.
        good = ObjectStore("s3://data", options_for(server))
        good.open()
        good.write("a.txt", b"a")
        unknown = ObjectStore("s3://data", options_for(server, access_key_id="AKIAUNKNOWN000000000"))
        with pytest.raises(StoreUnavailable, match="the access key is not known to the server"):
            unknown.open()
        wrong_secret = ObjectStore("s3://data", options_for(server, secret_access_key="wrong"))
        with pytest.raises(StoreUnavailable, match="the secret key does not match"):
            wrong_secret.open()
    finally:
        server.stop()


def test_gs_uses_the_s3_compatible_endpoint_unless_told_otherwise(server: S3Server) -> None:
    assert GcsStore("gs://bucket/p").client.meta.endpoint_url == "https://storage.googleapis.com"
    store = GcsStore("gs://data/gcs", options_for(server))
    store.write("a/b.jpg", b"bytes")
    assert keys_in(server, "gcs/") == {"gcs/a/b.jpg": 5}


def test_a_stored_object_is_readable_from_its_request_uri(server: S3Server) -> None:
    from urllib.request import urlopen

    store = ObjectStore("s3://data/presigned", options_for(server))
    store.write("train/images-original/abc/abc.jpg", b"original bytes")
    with urlopen(store.request_uri("train/images-original/abc/abc.jpg"), timeout=5) as response:
        assert response.read() == b"original bytes"


def test_the_crawl_reaches_an_object_store_with_scrapys_aws_settings() -> None:
    from openimages_crawler.crawl.config import store_options
    from tests.conftest import project_settings

    options = store_options(project_settings({
        "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION_NAME": "eu-west-1",
        "AWS_USE_SSL": "False", "AWS_VERIFY": "False", "OPENIMAGES_STORE_CONCURRENCY": "8",
    }))
    assert options == StoreOptions(access_key_id="key", secret_access_key="secret", session_token="token",
                                   endpoint_url="http://127.0.0.1:9000", region_name="eu-west-1",
                                   use_ssl=False, verify=False, acl=None, concurrency=8)
    # Unset: boto3's own chain decides; no ACL unless one is asked for.
    assert store_options(project_settings()) == StoreOptions(concurrency=32)
    assert store_options(project_settings({"FILES_STORE_S3_ACL": "public-read"})).acl == "public-read"
    assert store_options(project_settings({"FILES_STORE_S3_ACL": "public-read",
                                           "IMAGES_STORE_S3_ACL": "bucket-owner-full-control"})).acl == (
        "bucket-owner-full-control")
    assert store_options(project_settings({"AWS_VERIFY": "/etc/ssl/ca.pem"})).verify == "/etc/ssl/ca.pem"


def test_a_bucket_fetches_and_sends_its_copies_of_records_files(server: S3Server, tmp_path: Path) -> None:
    store = ObjectStore("s3://data/copies", options_for(server, concurrency=8))
    assert store.write_threads == 8  # its uploads' own threads
    records = store.records(str(tmp_path / "work"))
    key = "train/annotations.csv"
    local = records.path(key)
    local.parent.mkdir(parents=True)
    local.write_bytes(b"stale")
    assert not store.fetch_copy(records, key) and not local.exists()  # the bucket has none: none kept
    assert store.stat(key) is None  # the folder's listing, now cached
    ObjectStore("s3://data/copies", options_for(server)).write(key, b"another run's rows")
    assert store.fetch_copy(records, key)  # asked of the bucket, not of the cached listing
    assert local.read_bytes() == b"another run's rows"
    local.write_bytes(b"another run's rows, and ours")
    store.send_copy(records, local)
    assert keys_in(server, "copies/") == {"copies/train/annotations.csv": 28}
    assert store.read(key) == b"another run's rows, and ours"


def test_an_acl_is_sent_only_when_set(server: S3Server) -> None:
    plain = ObjectStore("s3://data/acl", options_for(server))
    public = ObjectStore("s3://data/acl", options_for(server, acl="public-read"))
    plain.write("plain.jpg", b"x")
    public.write("public.jpg", b"x")
    client = server.client()
    grants = {key: [grant["Permission"] for grant in client.get_object_acl(Bucket="data", Key=f"acl/{key}")["Grants"]]
              for key in ("plain.jpg", "public.jpg")}
    assert grants["plain.jpg"] == ["FULL_CONTROL"]
    assert sorted(grants["public.jpg"]) == ["FULL_CONTROL", "READ"]


def test_pull_then_push_keep_every_row_once_across_an_interrupted_merge(server: S3Server, tmp_path: Path) -> None:
    from openimages_crawler.store import sync
    from openimages_crawler.store.local import LocalStore

    store = ObjectStore("s3://data/mirror", options_for(server))
    work = LocalStore(str(tmp_path / "work"))
    patterns = [str(work.root / "*" / "images-success.csv")]
    header = "ImageID\n"
    store.write("train/images-success.csv", (header + "a\n").encode())
    store.write("train/.parts/images-success.1of2.csv", (header + "b\n").encode())
    store.write("train/.parts/images-success.2of2.csv", (header + "c\n").encode())
    # A stale local copy and a local journal from a dead run are replaced, not trusted.
    (work.root / "train" / ".parts").mkdir(parents=True)
    (work.root / "train" / ".parts" / "images-success.3of3.csv").write_text(header + "stale\n")
    (work.root / "train" / ".parts" / "images-success.csv.merge").write_text("{}")

    assert sync.pull(store, work, patterns) == 3
    assert sorted(p.relative_to(work.root).as_posix() for p in work.root.rglob("*") if p.is_file()) == [
        "train/.parts/images-success.1of2.csv", "train/.parts/images-success.2of2.csv", "train/images-success.csv"]

    # The run merges locally, then sends: the results file up, the parts of its shard deleted.
    (work.root / "train" / "images-success.csv").write_text(header + "a\nb\nc\nd\n")
    for part in (work.root / "train" / ".parts").iterdir():
        part.unlink()
    assert sync.push_results(store, work, patterns, 1, 2) == 1
    keys = set(store.list("train"))
    assert keys == {"train/images-success.csv", "train/.parts/images-success.2of2.csv"}  # 2of2 is not shard 1's
    assert store.metadata("train/images-success.csv")[sync.MERGE_ID]

    # A kill after the results file went up but before its parts were deleted: the next
    # pull finishes the merge (the journal names the file's merge id) instead of counting
    # the parts' rows twice.
    merged_id = store.metadata("train/images-success.csv")[sync.MERGE_ID]
    etag = store.entries("train/.parts")[0]["images-success.2of2.csv"].etag
    store.write("train/.parts/images-success.csv.merge.json",
                json.dumps({"id": merged_id, "parts": {"train/.parts/images-success.2of2.csv": etag}}).encode())
    sync.pull(store, work, patterns)
    assert set(store.list("train")) == {"train/images-success.csv"}
    # A journal whose results file never went up is dropped and its parts are kept.
    store.write("train/.parts/images-success.1of2.csv", (header + "e\n").encode())
    store.write("train/.parts/images-success.csv.merge.json",
                json.dumps({"id": "never-uploaded", "parts": {"train/.parts/images-success.1of2.csv": "x"}}).encode())
    sync.pull(store, work, patterns)
    assert set(store.list("train")) == {"train/images-success.csv", "train/.parts/images-success.1of2.csv"}
    assert (work.root / "train" / ".parts" / "images-success.1of2.csv").read_text() == header + "e\n"


def test_shards_on_two_machines_settle_into_the_buckets_current_results(server: S3Server, tmp_path: Path) -> None:
    """Each machine pulled before the other settled: each settle merges into
    the results file as the bucket has it then, so neither loses the other's rows."""
    from openimages_crawler.checkpoint.settle import settle_results
    from openimages_crawler.store import sync
    from openimages_crawler.store.local import LocalStore

    store = ObjectStore("s3://data/two-machines", options_for(server))
    header = "ImageID\n"
    store.write("train/images-success.csv", (header + "old\n").encode())
    machines = {}
    for index in (1, 2):
        work = LocalStore(str(tmp_path / f"machine{index}"))
        files = {"success": [str(work.root / "*" / "images-success.csv")],
                 "failure": [str(work.root / "*" / "images-failure.csv")]}
        sync.pull(store, work, files["success"] + files["failure"])
        part = work.root / "train" / ".parts" / f"images-success.{index}of2.csv"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_text(header + f"new{index}\n")
        store.upload(part, f"train/.parts/{part.name}")  # as the periodic upload does
        machines[index] = (work, files)
    for index, (work, files) in machines.items():
        settle_results(store, work, files, index, 2)
    assert sorted(store.read("train/images-success.csv").decode().splitlines()) == [
        "ImageID", "new1", "new2", "old"]
    # Parts merged and deleted, leases released; the attribution follows the merged results.
    assert set(store.list("")) == {"train/images-success.csv", "train/ATTRIBUTION.csv", "train/ATTRIBUTION.md"}
    assert store.read("train/ATTRIBUTION.csv").decode().splitlines()[1:] == [
        f"{image_id},,,,," for image_id in ("old", "new1", "new2")]


def test_glob_keys_walks_folders_without_listing_the_images(server: S3Server) -> None:
    from openimages_crawler.store import sync

    store = ObjectStore("s3://data/globbed", options_for(server))
    for key in ("train/images-success.csv", "validation/images-success.csv", "train/224/abc/abc.jpg",
                "train/.parts/images-success.1of1.csv", "report.json"):
        store.write(key, b"x")
    calls = counted(store)
    assert sorted(sync.glob_keys(store, "*/images-success.csv")) == [
        "train/images-success.csv", "validation/images-success.csv"]
    assert sorted(sync.glob_keys(store, "*/.parts/images-success.*.csv")) == ["train/.parts/images-success.1of1.csv"]
    assert calls["ListObjectsV2"] == 6  # the top, then each subset folder (and its .parts): never 224/


def test_the_store_endpoint_is_trusted_by_the_private_address_guard() -> None:
    from openimages_crawler.crawl.hosts import is_trusted
    from openimages_crawler.store.local import LocalStore

    hosts = ObjectStore("s3://data/x", StoreOptions(endpoint_url="http://minio.lan:9000")).trusted_hosts()
    assert hosts == {"minio.lan"}
    assert is_trusted("minio.lan", hosts) and is_trusted("data.minio.lan", hosts)
    assert not is_trusted("evil-minio.lan", hosts) and not is_trusted("10.0.0.1", hosts)
    assert LocalStore("/tmp/x").trusted_hosts() == frozenset()
