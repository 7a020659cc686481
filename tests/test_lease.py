"""Leases in a bucket (``store.lease``) against a real S3-protocol server on
127.0.0.1: conditional writes decide who holds a lock, renewals keep it,
silence or a dead holder frees it, and a holder that lost it is told."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from openimages_crawler.store.base import StoreOptions
from openimages_crawler.store.lease import (
    BucketLease,
    BucketShardLock,
    bucket_exclusive,
)
from openimages_crawler.store.lock import StoreLocked, new_holder
from openimages_crawler.store.objects import ObjectStore
from openimages_crawler.testing.objects import S3Server


@pytest.fixture
def store(s3: S3Server) -> ObjectStore:
    """A prefix of its own in the session's bucket."""
    return ObjectStore(f"s3://data/lease-{uuid.uuid4().hex[:8]}", StoreOptions(
        access_key_id=s3.access_key, secret_access_key=s3.secret_key, endpoint_url=s3.endpoint,
        region_name="us-east-1"))


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_conditional_writes_let_one_writer_win(store: ObjectStore) -> None:
    first = store.put_if("k", b"one")
    assert first is not None
    assert store.put_if("k", b"two") is None  # exists already
    second = store.put_if("k", b"three", first)
    assert second is not None and second != first
    assert store.put_if("k", b"four", first) is None  # replaced since
    looked = store.look("k")
    assert looked is not None and looked.body == b"three" and looked.etag == second and 0 <= looked.age < 5
    assert not store.delete_if("k", first)
    assert store.delete_if("k", second)
    assert store.look("k") is None


def test_one_holder_at_a_time_and_release_frees_it(store: ObjectStore) -> None:
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


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: object) -> Iterator[bytes]:
        yield self.data


def test_a_server_without_conditional_writes_gets_a_look_first(
    store: ObjectStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that answers a conditional PUT with 501 (older S3-compatible
    servers) still gets the lease's semantics between two requests, with a warning."""
    from botocore.awsrequest import AWSResponse

    def refuse_conditions(request: object, **_: object) -> AWSResponse | None:
        headers = request.headers  # type: ignore[attr-defined]
        if "If-None-Match" in headers or "If-Match" in headers:
            return AWSResponse(request.url, 501, {}, _Body(  # type: ignore[attr-defined]
                b"<Error><Code>NotImplemented</Code><Message>no conditions here</Message></Error>"))
        return None

    store.client.meta.events.register("before-send.s3.PutObject", refuse_conditions)
    first = store.put_if("k", b"one")
    assert first is not None and store.read("k") == b"one"
    assert store.put_if("k", b"two") is None
    assert store.put_if("k", b"three", first) is not None
    assert store.put_if("k", b"four", first) is None
    assert store.read("k") == b"three"
    assert caplog.text.count("has no conditional writes") == 1
