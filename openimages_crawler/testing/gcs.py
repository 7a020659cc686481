"""A bucket server on 127.0.0.1 whose writes obey Google Cloud Storage's XML
API rules rather than S3's: ``If-None-Match`` / ``If-Match`` on a PUT or DELETE
are ignored (GCS documents them for reads only), ``x-goog-if-generation-match``
is enforced (``0``: only if there is no live object), and every object has a
``x-goog-generation``. For the leases' tests: an ``s3://`` store sees a server
that does not enforce its conditional writes, a ``gs://`` store one that does.

Path-style requests, no authentication, no multipart uploads: PUT, GET, HEAD,
DELETE of objects and the ListObjectsV2 listing of a bucket.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape


@dataclass(frozen=True)
class _Object:
    body: bytes
    generation: int
    modified: float  # time.time() of the write

    @property
    def etag(self) -> str:
        return f'"{hashlib.md5(self.body).hexdigest()}"'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: GcsLikeServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _target(self) -> tuple[str, str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        bucket, _, key = parts.path.lstrip("/").partition("/")
        return bucket, unquote(key), parse_qs(parts.query)

    def _refused_by_precondition(self, key: str) -> bool:
        """``x-goog-if-generation-match`` against the live generation (0: none);
        answers 412 itself when it does not match."""
        wanted = self.headers.get("x-goog-if-generation-match")
        found = self.server.objects.get(key)
        if wanted is None or int(wanted) == (found.generation if found else 0):
            return False
        self._error(412, "PreconditionFailed")
        return True

    def do_PUT(self) -> None:  # noqa: N802
        _, key, _ = self._target()
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            if self._refused_by_precondition(key):
                return
            self.server.generations += 1
            stored = self.server.objects[key] = _Object(body, self.server.generations, time.time())
        self._answer(200, b"", stored)

    def do_GET(self) -> None:  # noqa: N802
        _, key, query = self._target()
        if not key:
            return self._list(query)
        found = self.server.objects.get(key)
        if found is None:
            return self._error(404, "NoSuchKey")
        return self._answer(200, found.body, found)

    def do_HEAD(self) -> None:  # noqa: N802
        _, key, _ = self._target()
        found = self.server.objects.get(key)
        if found is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._answer(200, b"", found, content_length=len(found.body))

    def do_DELETE(self) -> None:  # noqa: N802
        _, key, _ = self._target()
        with self.server.lock:
            if self._refused_by_precondition(key):
                return
            self.server.objects.pop(key, None)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _list(self, query: dict[str, list[str]]) -> None:
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        contents: list[str] = []
        folders: set[str] = set()
        for key, found in sorted(self.server.objects.copy().items()):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                folders.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
                continue
            contents.append(f"<Contents><Key>{escape(key)}</Key><Size>{len(found.body)}</Size>"
                            f"<ETag>{escape(found.etag)}</ETag><LastModified>"
                            f"{time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime(found.modified))}"
                            "</LastModified></Contents>")
        common = [f"<CommonPrefixes><Prefix>{escape(name)}</Prefix></CommonPrefixes>" for name in sorted(folders)]
        body = ("<ListBucketResult><IsTruncated>false</IsTruncated>"
                f"<KeyCount>{len(contents) + len(common)}</KeyCount>{''.join(contents)}{''.join(common)}"
                "</ListBucketResult>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, status: int, body: bytes, found: _Object, content_length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("ETag", found.etag)
        self.send_header("x-goog-generation", str(found.generation))
        self.send_header("Last-Modified", formatdate(found.modified, usegmt=True))
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str) -> None:
        body = f"<Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class GcsLikeServer(ThreadingHTTPServer):
    """The server, serving from a thread of its own once ``start``-ed; any bucket name is accepted."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.objects: dict[str, _Object] = {}
        self.generations = 0
        self.lock = threading.Lock()  # a precondition and its write are one step

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> GcsLikeServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
