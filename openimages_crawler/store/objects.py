"""A store in an S3-compatible bucket (``s3://bucket/prefix``; ``gs://`` through
Google Cloud Storage's S3-compatible XML API).

Every object is written with one PUT (or, past ``multipart_bytes``, one
multipart upload, which S3 also publishes only when it completes), so an
object appears complete or not at all: there is no staging to clean up after a
kill -9. ``stat`` answers from one listing per folder, cached, so a rerun over
millions of rows costs a listing per prefix rather than a HEAD per row.

boto3 is imported when such a store is opened, not before: a crawl into a
local folder never loads it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import urlsplit

from openimages_crawler.store import sync
from openimages_crawler.store.base import StoreOptions, store_scheme, within
from openimages_crawler.store.layout import LOCKS_DIR
from openimages_crawler.store.lease import BucketLease, BucketShardLock, RunLock, bucket_exclusive, records_and_bucket
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.lock import StoreLock, StoreLocked

logger = logging.getLogger(__name__)

# Google Cloud Storage's S3-compatible endpoint (HMAC keys as the AWS key pair).
# Tries of the check at start (the crawl's own requests get StoreOptions.attempts).
CHECK_ATTEMPTS = 2
# Folders whose listing is kept for ``stat``; rows arrive in ImageID order, so
# a few folders at a time are enough.
LISTED_FOLDERS = 64
# Whether a server enforces create-if-absent, by (endpoint, store URI): probed once per
# process, however many store objects a command makes of one IMAGES_STORE.
_EXCLUSIVE_CREATES: dict[tuple[str, str], bool] = {}
_EXCLUSIVE_CREATES_LOCK = threading.Lock()


class ObjectEntry(NamedTuple):
    size: int
    etag: str  # changes whenever the object is written again


class Looked(NamedTuple):
    body: bytes
    version: str  # what a conditional write names: the ETag (GCS: the generation)
    age: float  # seconds since it was last written, by the server's clock


class StoreUnavailable(OSError):
    """The bucket cannot be used: missing, refused credentials, unreachable endpoint,
    or a server whose conditional writes cannot keep the leases' holders apart."""


class _NoConditions(OSError):
    """The server refused a conditional write as not implemented."""


def split_uri(uri: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket/prefix``; the prefix is empty or ends in ``/``."""
    parts = urlsplit(uri)
    if not parts.netloc:
        raise ValueError(f"{uri!r} names no bucket (expected {parts.scheme}://BUCKET/PREFIX)")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


class ObjectStore:
    """``s3://bucket/prefix`` (or ``gs://``) with the local store's relative layout."""

    default_endpoint: str | None = None

    def __init__(self, uri: str, options: StoreOptions | None = None) -> None:
        self.uri = uri
        self.options = options or StoreOptions()
        self.write_threads = self.options.concurrency  # the crawl's upload threads
        self.bucket, self.prefix = split_uri(uri)
        self._client: Any = None
        self._client_lock = threading.Lock()  # the upload threads' first writes would each make one
        self._listed: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._parents: dict[str, set[str]] = {}  # folder -> its sub-folders (a few per output)
        self._listed_lock = threading.Lock()

    # --- the connection ------------------------------------------------------

    @property
    def client(self) -> Any:
        """A boto3 S3 client (thread-safe; one per store, made once: making one
        costs a tenth of a second of CPU)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._new_client(self.options.attempts)
        return self._client

    def _new_client(self, attempts: int) -> Any:
        import boto3  # noqa: PLC0415 (only object stores need it)
        from botocore.config import Config  # noqa: PLC0415

        options = self.options
        config = Config(
            max_pool_connections=max(options.concurrency, 10),
            retries={"mode": "standard", "max_attempts": attempts},
            connect_timeout=10,
            read_timeout=60,
        )
        return boto3.session.Session().client(
            "s3",
            aws_access_key_id=options.access_key_id,
            aws_secret_access_key=options.secret_access_key,
            aws_session_token=options.session_token,
            endpoint_url=options.endpoint_url or self.default_endpoint,
            region_name=options.region_name,
            use_ssl=True if options.use_ssl is None else options.use_ssl,
            verify=options.verify,
            config=config,
        )

    def key(self, key: str) -> str:
        return self.prefix + key

    def check(self) -> None:
        """One request that proves the bucket exists and the credentials may list
        it, or ``StoreUnavailable`` saying which of the two failed. Tried twice, not
        ``attempts`` times: a crawl that cannot start says so within seconds. Then
        the probe of the server's conditional writes, which every crawl's and
        fleet's locks rely on (``prove_exclusive_creates``)."""
        try:
            self._new_client(CHECK_ATTEMPTS).list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as exc:
            raise StoreUnavailable(f"{self.uri}: {describe_error(exc)}") from None
        try:
            self.prove_exclusive_creates()
        except OSError as exc:  # also credentials that may list the bucket but not write to it
            raise StoreUnavailable(str(exc)) from None

    def open(self) -> None:
        self.check()

    def close(self) -> None:
        with self._listed_lock:
            self._listed.clear()
            self._parents.clear()

    # --- objects -------------------------------------------------------------

    def stat(self, key: str) -> int | None:
        folder, _, name = key.rpartition("/")
        return self._folder(folder).get(name)

    def _folder(self, folder: str) -> dict[str, int]:
        """The objects directly in ``folder`` (name -> size), listed once; a folder
        its parent's listing does not name is not listed at all (a fresh store
        costs one listing per output, not one per prefix folder)."""
        with self._listed_lock:
            found = self._listed.get(folder)
            if found is not None:
                self._listed.move_to_end(folder)
                return found
        parent, _, name = folder.rpartition("/")
        if name in self._subfolders(parent):
            listing = {name: entry.size for name, entry in self.entries(folder)[0].items()}
        else:
            listing = {}
        with self._listed_lock:
            self._listed[folder] = listing
            while len(self._listed) > LISTED_FOLDERS:
                self._listed.popitem(last=False)
        return listing

    def _subfolders(self, folder: str) -> set[str]:
        """The sub-folders of ``folder``: listed when first asked, plus those
        this store has written into since."""
        with self._listed_lock:
            found = self._parents.get(folder)
        if found is None:
            listed = set(self.entries(folder)[1])
            with self._listed_lock:
                found = self._parents.setdefault(folder, listed)
        return found

    def entries(self, folder: str) -> tuple[dict[str, ObjectEntry], list[str]]:
        """What is directly in ``folder``: its objects by name, and its sub-folders' names."""
        start = self.key(f"{folder}/" if folder else "")
        objects: dict[str, ObjectEntry] = {}
        folders: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start, Delimiter="/"
            )
            for page in pages:
                for entry in page.get("Contents", ()):
                    objects[entry["Key"][len(start):]] = ObjectEntry(entry["Size"], entry["ETag"])
                folders += [common["Prefix"][len(start):].rstrip("/") for common in page.get("CommonPrefixes", ())]
        except Exception as exc:
            raise OSError(f"cannot list {self.uri}/{folder}: {describe_error(exc)}") from None
        return objects, folders

    def _remember(self, key: str, size: int | None) -> None:
        folder, _, name = key.rpartition("/")
        parent, _, child = folder.rpartition("/")
        with self._listed_lock:
            if size is not None and parent in self._parents:
                self._parents[parent].add(child)
            listing = self._listed.get(folder)
            if listing is not None:
                if size is None:
                    listing.pop(name, None)
                else:
                    listing[name] = size

    def read(self, key: str, most: int | None = None) -> bytes:
        bounded = {} if most is None else {"Range": f"bytes=0-{most}"}
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(key), **bounded)["Body"].read()
        except Exception as exc:
            raise OSError(f"cannot read {self.uri}/{key}: {describe_error(exc)}") from None
        return within(key, body, most)

    def write(self, key: str, data: bytes) -> None:
        if len(data) > self.options.multipart_bytes:
            self._upload(key, io.BytesIO(data))
        else:
            digest = base64.b64encode(hashlib.md5(data).digest()).decode("ascii")
            try:  # Content-MD5: the server refuses a body that changed on the way
                self.client.put_object(Bucket=self.bucket, Key=self.key(key), Body=data,
                                       ContentMD5=digest, **self._acl())
            except Exception as exc:
                raise OSError(f"cannot write {self.uri}/{key}: {describe_error(exc)}") from None
        self._remember(key, len(data))

    @contextmanager
    def writing(self, key: str) -> Iterator[IO[bytes]]:
        """Spooled to a local temporary file, uploaded when the block completes."""
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
            yield spool  # type: ignore[misc]
            size = spool.tell()
            spool.seek(0)
            self._upload(key, spool)
        self._remember(key, size)

    def _upload(self, key: str, source: IO[bytes], metadata: dict[str, str] | None = None) -> None:
        from boto3.s3.transfer import TransferConfig  # noqa: PLC0415

        config = TransferConfig(multipart_threshold=self.options.multipart_bytes,
                                max_concurrency=4, use_threads=True)
        extra: dict[str, Any] = {**self._acl(), **({"Metadata": metadata} if metadata else {})}
        try:
            self.client.upload_fileobj(source, self.bucket, self.key(key), ExtraArgs=extra or None, Config=config)
        except Exception as exc:
            raise OSError(f"cannot write {self.uri}/{key}: {describe_error(exc)}") from None

    def list(self, prefix: str) -> Iterator[str]:
        start = self.key(prefix.rstrip("/") + "/" if prefix else "")
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start
            ):
                for entry in page.get("Contents", ()):
                    yield entry["Key"][len(self.prefix):]
        except Exception as exc:
            raise OSError(f"cannot list {self.uri}/{prefix}: {describe_error(exc)}") from None

    def upload(self, path: Path, key: str, metadata: dict[str, str] | None = None) -> None:
        """A local file to ``key`` (in parts when large), with user ``metadata``."""
        with open(path, "rb") as source:
            self._upload(key, source, metadata)
        self._remember(key, path.stat().st_size)

    def download(self, key: str, path: Path) -> None:
        """``key`` to a local file, which appears complete or not at all."""
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self.key(key), str(temp))
            os.replace(temp, path)
        except Exception as exc:
            raise OSError(f"cannot read {self.uri}/{key}: {describe_error(exc)}") from None
        finally:
            temp.unlink(missing_ok=True)

    def metadata(self, key: str) -> dict[str, str] | None:
        """The user metadata of ``key``; ``None`` when there is no such object."""
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self.key(key))["Metadata"])
        except Exception as exc:
            if _error_code(exc) in _MISSING:
                return None
            raise OSError(f"cannot read {self.uri}/{key}: {describe_error(exc)}") from None

    # --- conditional writes (the leases of ``store.lease``) -------------------

    def put_if(self, key: str, data: bytes, version: str | None = None) -> str | None:
        """Write ``key`` only if it does not exist (``version`` None) or still has
        ``version``; its new version, or ``None`` when the condition failed (another
        writer came first). The first call proves that the server enforces the
        condition (``prove_exclusive_creates``)."""
        if not self.prove_exclusive_creates():
            return self._put_after_look(key, data, version)
        return self._put_conditionally(key, data, version)

    def prove_exclusive_creates(self) -> bool:
        """Whether the server refuses a second create-if-absent of one object,
        found once per process by a probe under ``.locks/`` (created twice, then
        deleted). Only that refusal keeps two holders of a lease apart, and a
        server may ignore the condition without an error: then
        ``StoreUnavailable`` naming the server, unless ``unsafe_leases`` (then
        ``False``, said once in a warning)."""
        endpoint = self.client.meta.endpoint_url
        with _EXCLUSIVE_CREATES_LOCK:
            enforced = _EXCLUSIVE_CREATES.get((endpoint, self.uri))
            if enforced is None:
                enforced = _EXCLUSIVE_CREATES[endpoint, self.uri] = self._probe_exclusive_creates()
                if not enforced and self.options.unsafe_leases:
                    logger.warning("%s: the server at %s does not enforce conditional writes; with "
                                   "OPENIMAGES_UNSAFE_LEASES the bucket's locks are taken with a look before each "
                                   "write, which cannot keep runs on several machines apart", self.uri, endpoint)
        if not enforced and not self.options.unsafe_leases:
            raise StoreUnavailable(
                f"{self.uri}: the server at {endpoint} does not enforce conditional writes (it accepted a second "
                "create-if-absent of one object), so the bucket's locks cannot keep two runs apart; use a server "
                "that enforces them, or set OPENIMAGES_UNSAFE_LEASES=True to take them anyway")
        return enforced

    def _probe_exclusive_creates(self) -> bool:
        key = f"{LOCKS_DIR}/probe-{uuid.uuid4().hex}"
        try:
            created = self._put_conditionally(key, b"probe", None) is not None
            return created and self._put_conditionally(key, b"probe again", None) is None
        except _NoConditions:
            return False
        finally:
            self.delete(key)

    def _put_conditionally(self, key: str, data: bytes, version: str | None) -> str | None:
        condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
        try:
            written = self.client.put_object(Bucket=self.bucket, Key=self.key(key), Body=data, **condition)
        except Exception as exc:
            code = _error_code(exc)
            if code in _CONFLICTS:
                return None
            error = _NoConditions if code in _UNSUPPORTED else OSError
            raise error(f"cannot write {self.uri}/{key}: {describe_error(exc)}") from None
        return self._version(written)

    def _put_after_look(self, key: str, data: bytes, version: str | None) -> str | None:
        """``put_if`` on a server without conditional writes: a look, then a
        plain PUT (two writers in between both win)."""
        found = self.look(key)
        if (found.version if found is not None else None) != version:
            return None
        try:
            written = self.client.put_object(Bucket=self.bucket, Key=self.key(key), Body=data)
        except Exception as exc:
            raise OSError(f"cannot write {self.uri}/{key}: {describe_error(exc)}") from None
        return self._version(written)

    def _version(self, response: dict[str, Any]) -> str:
        """What a conditional write names, from a PUT's or GET's response."""
        return str(response["ETag"])

    def look(self, key: str) -> Looked | None:
        """``key``'s body, version and age by the server's clock (the writers'
        clocks may disagree); ``None`` when there is no such object."""
        try:
            found = self.client.get_object(Bucket=self.bucket, Key=self.key(key))
        except Exception as exc:
            if _error_code(exc) in _MISSING:
                return None
            raise OSError(f"cannot read {self.uri}/{key}: {describe_error(exc)}") from None
        served = found["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(served) if served else datetime.now(UTC)
        return Looked(found["Body"].read(), self._version(found),
                      max((now - found["LastModified"]).total_seconds(), 0.0))

    def delete_if(self, key: str, version: str) -> bool:
        """Delete ``key`` if it still has ``version``; whether it did. A server
        without conditional deletes gets a look first (a small race)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(key), IfMatch=version)
        except Exception as exc:
            code = _error_code(exc)
            if code in _CONFLICTS or code in _MISSING:
                return False
            if code not in _UNSUPPORTED:
                raise OSError(f"cannot delete {self.uri}/{key}: {describe_error(exc)}") from None
            found = self.look(key)
            if found is None or found.version != version:
                return False
            self.delete(key)
        return True

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(key))
        except Exception as exc:
            raise OSError(f"cannot delete {self.uri}/{key}: {describe_error(exc)}") from None
        self._remember(key, None)

    def free_bytes(self) -> int | None:
        return None  # a bucket has no size limit the crawl can see

    def request_uri(self, key: str) -> str:
        """A presigned URL (a day long) from which a plain GET reads the object."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(key)}, ExpiresIn=86400
        )

    def _acl(self) -> dict[str, str]:
        return {"ACL": self.options.acl} if self.options.acl else {}

    # --- the store's seam beyond objects: locks, records, hosts ---------------

    def exists(self, key: str) -> bool:
        """Asked of the bucket, not of the listing cache: another machine may have written it a moment ago."""
        return self.metadata(key) is not None

    def publish(self, path: Path, key: str) -> None:
        """A finished local file becomes ``key``: one upload (multipart past
        ``multipart_bytes``, which also appears only when complete)."""
        self.upload(path, key)
        path.unlink(missing_ok=True)

    @contextmanager
    def exclusive(self, name: str, stop: threading.Event | None = None, wait: bool = True) -> Iterator[None]:
        """The bucket's lease ``.locks/{name}``, renewed while held."""
        if wait:
            with bucket_exclusive(self, name, stop):
                yield
            return
        lease = BucketLease(self, name)
        holder = lease.try_take()
        if holder is not None:
            raise StoreLocked(f"{self.uri}/{lease.key} is held ({holder})")
        try:
            yield
        finally:
            lease.release()

    def shared(self, records: Path, name: str, stop: threading.Event | None = None) -> AbstractContextManager[None]:
        """``name`` over the files runs share: their local copies in ``records`` and the bucket's."""
        return records_and_bucket(self, records, name, stop)

    def run_lock(self, records: Path, index: int = 1, count: int = 1,
                 on_lost: Callable[[str], None] | None = None) -> RunLock:
        """One run of shard ``index`` of ``count`` at a time: the records folder's
        lock and the bucket's lease (``on_lost`` when it cannot be renewed)."""
        return RunLock(StoreLock(records, index, count), BucketShardLock(self, index, count, on_lost))

    def records(self, work: str) -> LocalStore:
        """The local folder of the crawl's records (results, parts, locks, the
        metadata cache), synced with the bucket (``store.sync``): ``work``
        (OPENIMAGES_WORK_DIR), by default one per bucket and prefix under
        ~/.cache/openimages-crawler."""
        if not work:
            bucket, prefix = split_uri(self.uri)
            work = str(Path.home() / ".cache" / "openimages-crawler" / store_scheme(self.uri) / bucket / prefix)
        return LocalStore(work)

    def fetch_results(self, local: LocalStore, final_patterns: list[str], whole: bool = False) -> int | None:
        """The bucket's results files (``whole``: and every part) into the records
        folder ``local``, an interrupted merge finished or undone first; the files fetched."""

        return sync.pull(self, local, final_patterns) if whole else sync.refresh_finals(self, local, final_patterns)

    def send_results(self, local: LocalStore, files: dict[str, list[str]], index: int = 1, count: int = 1) -> None:
        """The records folder's merged results (and attribution) up, shard ``index`` of ``count``'s parts deleted."""

        sync.send_results(self, local, files, index, count)

    def fetch_copy(self, records: LocalStore, key: str) -> bool:
        """The bucket's object ``key`` downloaded into the records folder; asked of
        the bucket, not of the listing cache (another run may have just written it)."""
        target = records.path(key)
        if not self.exists(key):
            target.unlink(missing_ok=True)
            return False
        self.download(key, target)
        return True

    def send_copy(self, records: LocalStore, path: Path) -> None:
        """The records folder's file ``path`` uploaded to the same key in the bucket."""
        self.upload(path, sync.relative(records, str(path)))

    def trusted_hosts(self) -> frozenset[str]:
        """The endpoint's host (a private MinIO, say): the crawl reads stored
        originals back from it, so the private-address guard lets it through."""
        host = urlsplit(self.client.meta.endpoint_url).hostname
        return frozenset({host}) if host else frozenset()


_CONFLICTS = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING = {"NoSuchKey", "404"}
_UNSUPPORTED = {"NotImplemented", "501", "InvalidArgument"}  # a server without conditional requests


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def describe_error(exc: BaseException) -> str:
    """One line for a botocore error: what the server said, or why it was not reached."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = str(error.get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        explained = {
            "NoSuchBucket": "the bucket does not exist",
            "404": "the bucket does not exist",
            "InvalidAccessKeyId": "the access key is not known to the server (AWS_ACCESS_KEY_ID)",
            "SignatureDoesNotMatch": "the secret key does not match the access key (AWS_SECRET_ACCESS_KEY)",
            "AccessDenied": "access denied: the credentials may not use this bucket",
            "403": "access denied: the credentials may not use this bucket",
            "ExpiredToken": "the session token has expired (AWS_SESSION_TOKEN)",
        }.get(code)
        message = error.get("Message") or code
        return explained or f"{message} (HTTP {status})"
    name = type(exc).__name__
    if name in {"NoCredentialsError", "PartialCredentialsError"}:
        return "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the AWS environment)"
    if name in {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"}:
        return f"the endpoint cannot be reached ({exc})"
    return str(exc) or name
