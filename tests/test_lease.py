"""Leases in a bucket (``store.lease``) against real servers on 127.0.0.1 (moto's
S3, and a server that answers writes as GCS's XML API does): conditional writes
decide who holds a lock, renewals keep it, silence or a dead holder frees it, a
holder that lost it is told, and a server that does not enforce the conditions
is found out before the first lease."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from scrapy.exceptions import UsageError

from openimages_crawler.crawl.config import check_store
from openimages_crawler.store.base import StoreOptions
from openimages_crawler.store.gcs import GcsStore
from openimages_crawler.store.lease import (
    BucketLease,
    BucketShardLock,
    bucket_exclusive,
)
from openimages_crawler.store.lock import StoreLocked, new_holder
from openimages_crawler.store.objects import ObjectStore, StoreUnavailable
from openimages_crawler.testing.gcs import GcsLikeServer
from openimages_crawler.testing.objects import ANONYMOUS, REGION, S3Server


def bucket_store(store_class: type[ObjectStore], scheme: str, endpoint: str, **options: object) -> ObjectStore:
    """A prefix of its own in bucket ``data`` of the server at ``endpoint``."""
    return store_class(f"{scheme}://data/lease-{uuid.uuid4().hex[:8]}", StoreOptions(
        access_key_id=ANONYMOUS[0], secret_access_key=ANONYMOUS[1], endpoint_url=endpoint, region_name=REGION,
        **options))  # type: ignore[arg-type]


@pytest.fixture
def store(s3: S3Server) -> ObjectStore:
    return bucket_store(ObjectStore, "s3", s3.endpoint)


@pytest.fixture
def gcs_like() -> Iterator[GcsLikeServer]:
    server = GcsLikeServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["s3 on moto", "gs on a GCS-like server"])
def enforcing_store(request: pytest.FixtureRequest) -> ObjectStore:
    """A store whose server enforces its conditional writes: S3's headers on moto,
    GCS's generation preconditions on a server that ignores S3's."""
    if request.param == "s3 on moto":
        return bucket_store(ObjectStore, "s3", request.getfixturevalue("s3").endpoint)
    return bucket_store(GcsStore, "gs", request.getfixturevalue("gcs_like").endpoint)


def sent_headers(store: ObjectStore) -> list[dict[str, str]]:
    """The headers of every PUT and DELETE the store's client sends from now on."""
    sent: list[dict[str, str]] = []

    def record(request: Any, **_: object) -> None:
        sent.append({name.lower(): value.decode() if isinstance(value, bytes) else value
                     for name, value in request.headers.items()})

    for operation in ("PutObject", "DeleteObject"):
        store.client.meta.events.register(f"before-send.s3.{operation}", record)
    return sent


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_conditional_writes_let_one_writer_win(enforcing_store: ObjectStore) -> None:
    store = enforcing_store
    first = store.put_if("k", b"one")
    assert first is not None
    assert store.put_if("k", b"two") is None  # exists already
    second = store.put_if("k", b"three", first)
    assert second is not None and second != first
    assert store.put_if("k", b"four", first) is None  # replaced since
    looked = store.look("k")
    assert looked is not None and looked.body == b"three" and looked.version == second and 0 <= looked.age < 5
    assert not store.delete_if("k", first)
    assert store.delete_if("k", second)
    assert store.look("k") is None


def test_one_holder_at_a_time_and_release_frees_it(enforcing_store: ObjectStore) -> None:
    store = enforcing_store
    first, second = BucketLease(store, "results"), BucketLease(store, "results")
    assert first.try_take() is None
    holder = second.try_take()
    assert holder is not None and f"pid {new_holder()['pid']}" in str(holder)
    first.release()
    assert store.look(first.key) is None
    assert second.try_take() is None
    second.release()


def test_a_dead_holder_on_this_host_frees_the_lease_at_once(store: ObjectStore) -> None:
    store.put_if(".locks/results", json.dumps({**new_holder(), "pid": dead_pid()}).encode())
    lease = BucketLease(store, "results")
    assert lease.try_take() is None
    assert json.loads(store.read(".locks/results"))["token"] == lease.record["token"]
    lease.release()


def test_a_silent_holder_loses_the_lease_after_lease_s(store: ObjectStore) -> None:
    elsewhere = {**new_holder(), "host": "another-node"}
    store.put_if(".locks/results", json.dumps(elsewhere).encode())
    lease = BucketLease(store, "results", lease_s=1.0)
    assert lease.try_take() is not None  # just written: held
    time.sleep(2.2)  # the server's clock counts whole seconds
    assert lease.try_take() is None
    lease.release()


def test_renewals_keep_a_lease_and_a_replaced_one_is_reported_lost(store: ObjectStore) -> None:
    lost: list[str] = []
    kept = BucketLease(store, "shard-1of1", on_lost=lost.append, lease_s=1.5, renew_s=0.3)
    assert kept.try_take() is None
    time.sleep(2.0)  # past lease_s: only the renewals keep it
    assert BucketLease(store, "shard-1of1", lease_s=1.5).try_take() is not None
    assert not lost
    store.write(kept.key, b"{}")  # another process took it over
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lost and "another process took it over" in lost[0]
    kept.release()
    assert store.read(kept.key) == b"{}"  # the new holder's lease stays


def test_shards_of_one_count_share_the_store_and_another_count_is_refused(store: ObjectStore) -> None:
    first, second = BucketShardLock(store, 1, 2), BucketShardLock(store, 2, 2)
    first.acquire()
    second.acquire()
    with pytest.raises(StoreLocked, match="shard 1/2 of s3://.* is in use by another crawl"):
        BucketShardLock(store, 1, 2).acquire()
    with pytest.raises(StoreLocked, match="in use by a crawl in 2 shards"):
        BucketShardLock(store, 1, 1).acquire()
    assert store.look(".locks/shard-1of1") is None  # the refused one let go of its own lease
    first.release()
    second.release()
    whole = BucketShardLock(store, 1, 1)
    whole.acquire()
    whole.release()


def test_an_exclusive_lease_is_waited_for(store: ObjectStore) -> None:
    order: list[str] = []
    holding = threading.Event()

    def hold() -> None:
        with bucket_exclusive(store, "results"):
            order.append("first in")
            holding.set()
            time.sleep(0.5)
            order.append("first out")

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(10)
    with bucket_exclusive(store, "results"):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]
    stop = threading.Event()
    stop.set()
    with bucket_exclusive(store, "results"), pytest.raises(StoreLocked, match="stopped while waiting"):
        with bucket_exclusive(store, "results", stop):
            pass


def test_the_probe_passes_once_per_process_and_leaves_nothing(enforcing_store: ObjectStore) -> None:
    store = enforcing_store
    sent = sent_headers(store)
    store.check()
    with bucket_exclusive(store, "results"):
        assert store.prove_exclusive_creates()
    assert len(sent) == 2 + 1 + 2  # the probe's two creates and its delete; the lease's create and delete
    assert store.entries(".locks") == ({}, [])
    again = type(store)(store.uri, store.options)  # as a command opens IMAGES_STORE more than once
    sent_again = sent_headers(again)
    again.check()
    assert sent_again == []


def test_gs_writes_name_generations_not_s3_conditions(gcs_like: GcsLikeServer) -> None:
    """GCS's XML API enforces ``x-goog-if-generation-match`` on writes and ignores
    S3's conditions there: a gs:// store sends its own, on the generation the
    server answered. Not verified against GCS itself (moto knows no generations)."""
    store = bucket_store(GcsStore, "gs", gcs_like.endpoint)
    version = store.put_if("k", b"one")  # after the probe
    assert version == str(gcs_like.objects[store.key("k")].generation)
    sent = sent_headers(store)
    assert store.put_if("k", b"two", version) is not None
    assert store.put_if("k", b"three") is None
    conditions = [{name: value for name, value in headers.items() if name.startswith("if-") or "-if-" in name}
                  for headers in sent]
    assert conditions == [{"x-goog-if-generation-match": version}, {"x-goog-if-generation-match": "0"}]


def test_a_gs_store_on_a_server_without_generations_is_one_line(s3: S3Server) -> None:
    with pytest.raises(StoreUnavailable, match=r"^gs://.*: the server at http://127.0.0.1:\d+ does not answer as "
                       r"Google Cloud Storage \(no x-goog-generation\); use s3:// .*$"):
        bucket_store(GcsStore, "gs", s3.endpoint).check()


def test_a_server_that_ignores_conditional_writes_is_refused_naming_it(gcs_like: GcsLikeServer) -> None:
    """S3's conditional headers sent to a server that ignores them (GCS's XML API
    does on writes): two runs would both take one shard. Refused, in one line."""
    store = bucket_store(ObjectStore, "s3", gcs_like.endpoint)
    refused = f"the server at {gcs_like.endpoint} does not enforce conditional writes"
    with pytest.raises(StoreUnavailable, match=refused):
        BucketShardLock(store, 1, 2).acquire()
    with pytest.raises(UsageError, match=refused) as raised:
        check_store(bucket_store(ObjectStore, "s3", gcs_like.endpoint))
    assert "\n" not in str(raised.value) and "OPENIMAGES_UNSAFE_LEASES" in str(raised.value)
    assert gcs_like.objects == {}  # neither a lease nor a probe left


def test_unsafe_leases_take_the_lock_with_a_look_first_and_one_warning(
    gcs_like: GcsLikeServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = bucket_store(ObjectStore, "s3", gcs_like.endpoint, unsafe_leases=True)
    first = store.put_if("k", b"one")
    assert first is not None and store.read("k") == b"one"
    assert store.put_if("k", b"two") is None
    assert store.put_if("k", b"three", first) is not None
    assert store.put_if("k", b"four", first) is None
    assert store.read("k") == b"three"
    lease = BucketShardLock(store)
    lease.acquire()
    with pytest.raises(StoreLocked, match="in use by another crawl"):
        BucketShardLock(store).acquire()
    lease.release()
    assert caplog.text.count("does not enforce conditional writes") == 1


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: object) -> Iterator[bytes]:
        yield self.data


def test_a_server_answering_501_to_conditional_writes_is_refused_unless_allowed(s3: S3Server) -> None:
    """Older S3-compatible servers answer a conditional PUT with 501."""
    from botocore.awsrequest import AWSResponse

    def refuse_conditions(request: Any, **_: object) -> AWSResponse | None:
        if "If-None-Match" in request.headers or "If-Match" in request.headers:
            return AWSResponse(request.url, 501, {}, _Body(
                b"<Error><Code>NotImplemented</Code><Message>no conditions here</Message></Error>"))
        return None

    refused, allowed = (bucket_store(ObjectStore, "s3", s3.endpoint, unsafe_leases=unsafe) for unsafe in (False, True))
    for store in (refused, allowed):
        store.client.meta.events.register("before-send.s3.PutObject", refuse_conditions)
    with pytest.raises(StoreUnavailable, match="does not enforce conditional writes"):
        BucketLease(refused, "results").try_take()
    lease = BucketLease(allowed, "results")
    assert lease.try_take() is None
    assert BucketLease(allowed, "results").try_take() is not None
    lease.release()


def test_a_create_retried_after_its_first_attempt_committed_is_recognised_as_its_own(
    enforcing_store: ObjectStore
) -> None:
    """botocore retries a PUT that timed out; when the first attempt had committed,
    the retry is refused (the lease exists now): the record's token says it is ours."""
    store = enforcing_store
    lease = BucketLease(store, "shard-1of1")
    store.put_if(lease.key, json.dumps(lease.record).encode())  # the first attempt, its answer lost
    assert lease.try_take() is None
    looked = store.look(lease.key)
    assert looked is not None and lease.version == looked.version
    lease.release()
    assert store.look(lease.key) is None


def test_a_renewal_retried_after_its_first_attempt_committed_keeps_the_lease(store: ObjectStore) -> None:
    lost: list[str] = []
    lease = BucketLease(store, "shard-1of1", on_lost=lost.append, renew_s=0.3)
    assert lease.try_take() is None
    stale = lease.version
    store.write(lease.key, json.dumps(lease.record).encode())  # a renewal's first attempt, its answer lost
    time.sleep(1.0)  # renewals naming the version it no longer has
    assert not lost
    looked = store.look(lease.key)
    assert looked is not None and lease.version == looked.version != stale
    lease.release()
