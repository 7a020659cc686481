"""A small Open Images-like dataset and the hosts that serve it, offline.

``build_mirror`` makes images of the kinds Flickr serves (JPEG, progressive,
CMYK, grey, EXIF-rotated, PNG with alpha, palette, 16-bit, GIF), metadata
rows in the real images.csv format (HTML entities, commas, quotes, unicode in
Author and Title), and the faults real hosts show: the photo_unavailable
redirect, 404, flaky and dead 5xx, MD5 and size mismatches, a body cut short,
a hanging host, a truncated JPEG, a page that is not an image, a pixel bomb,
a refused connection and malformed rows. Each row knows the FailureReason it
must end with, so tests can check every row.

``MirrorServer`` serves it on one or more 127.x addresses and counts the
connections open at once per address (the connection-limit test reads them).
Run ``python -m openimages_crawler.testing.mirror DIR`` to build and serve one.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from openimages_crawler.dataset.catalogue import IMAGES_CSV_COLUMNS
from openimages_crawler.testing.images import IMAGE_KINDS, bomb_png, encoded, photo

UNAVAILABLE_PATH = "/images/en-us/photo_unavailable.png"


@dataclass
class Route:
    """How the server answers one path."""

    body: bytes = b""
    content_type: str = "image/jpeg"
    status: int = 200
    fail_first: int = 0  # answer 503 this many times, then serve
    cut_after: int | None = None  # send this many body bytes, then drop the connection
    delay: float = 0.0  # seconds before answering
    location: str = ""
    content_encoding: str = ""  # sent as Content-Encoding (the body is sent as it is)
    ranges: bool = False  # answer "Range: bytes=N-" with 206 and the rest of the body
    bytes_per_second: int | None = None  # send the body slowly
    headers: tuple[tuple[str, str], ...] = ()  # more response headers (X-Robots-Tag, say)


@dataclass
class MirrorRow:
    """One metadata row and what the crawl must make of it."""

    fields: dict[str, str]
    expected: str  # "success" or a FailureReason
    kind: str


@dataclass
class Mirror:
    rows: list[MirrorRow] = field(default_factory=list)
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)  # (host, path) -> route

    def write_metadata(self, path: Path, columns: tuple[str, ...] = IMAGES_CSV_COLUMNS) -> Path:
        """Write the rows as an images.csv (RFC 4180 quoting, as the real files)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns)
            for row in self.rows:
                writer.writerow([row.fields.get(name, "") for name in columns])
        return path

    def expected(self) -> dict[str, str]:
        return {row.fields["ImageID"]: row.expected for row in self.rows}


# Creative Commons licenses as Open Images writes them (every version of a kind: -a licenses ignores it).
LICENSES = [
    "https://creativecommons.org/licenses/by/2.0/",
    "https://creativecommons.org/licenses/by-sa/2.0/",
    "https://creativecommons.org/licenses/by/4.0/",
    "https://creativecommons.org/licenses/by-nc/2.0/",
    "https://creativecommons.org/licenses/by-sa/4.0/",
]

TITLES = [
    "Sunset over the bay",
    "O&#x27;Neil &amp; friends, \"at home\"",
    "Ça va? — día de campo, 東京",
    "Line one\nline two",
    "",
]


def _image_id(index: int) -> str:
    return hashlib.sha1(f"openimages-mirror-{index}".encode()).hexdigest()[:16]


def metadata_row(
    image_id: str, subset: str, url: str, body: bytes, index: int, *, size: str | None = None,
    md5: str | None = None,
) -> dict[str, str]:
    return {
        "ImageID": image_id,
        "Subset": subset,
        "OriginalURL": url,
        "OriginalLandingURL": f"https://www.flickr.com/photos/mirror/{index}",
        "License": LICENSES[index % len(LICENSES)],
        "AuthorProfileURL": f"https://www.flickr.com/people/mirror{index}/",
        "Author": f"Author {index}, Jr.",
        "Title": TITLES[index % len(TITLES)],
        "OriginalSize": str(len(body)) if size is None else size,
        "OriginalMD5": base64.b64encode(hashlib.md5(body).digest()).decode() if md5 is None else md5,
        "Thumbnail300KURL": f"{url.rsplit('.', 1)[0]}_z.jpg" if index % 7 else "",
        "Rotation": "0",
    }


@dataclass
class _MirrorBuilder:
    """Adds rows to ``mirror``, spread over ``hosts`` in turn, each with the
    route that serves its image."""

    mirror: Mirror
    hosts: list[str]
    subset: str
    index: int = 0  # the next row's: its ImageID, host and path follow from it

    def add(self, kind: str, expected: str, ext: str, body: bytes, route: Route | None = None,
            **row_overrides: str) -> None:
        host = self.hosts[self.index % len(self.hosts)]
        image_id = _image_id(self.index)
        path = f"/{self.index % 8}/{image_id}_{kind}.{ext}"
        fields = metadata_row(image_id, self.subset, host + path, body, self.index)
        fields.update(row_overrides)
        self.mirror.rows.append(MirrorRow(fields, expected, kind))
        self.mirror.routes[(host, path)] = route or Route(
            body=body, content_type="image/png" if ext == "png" else "image/jpeg"
        )
        self.index += 1


def build_mirror(
    hosts: list[str],
    *,
    subset: str = "train",
    copies: int = 1,
    faults: bool = True,
    hang_seconds: float = 30.0,
    refused_url: str = "http://127.0.0.1:9/",
) -> Mirror:
    """The dataset: ``copies`` images of every kind spread over ``hosts``
    (``http://ip:port`` bases), plus one row per fault when ``faults``."""
    builder = _MirrorBuilder(Mirror(), hosts, subset)
    for copy in range(copies):
        for kind, (ext, maker) in IMAGE_KINDS.items():
            builder.add(kind, "success", ext, maker(builder.index * 7 + copy))  # type: ignore[operator]
    if faults:
        _add_faults(builder, hang_seconds=hang_seconds, refused_url=refused_url)
    return builder.mirror


def _add_faults(builder: _MirrorBuilder, *, hang_seconds: float, refused_url: str) -> None:
    """One row per fault real hosts and metadata files show, each expecting
    the FailureReason the crawl must give it."""
    good = encoded(photo(400, 300, 99), "JPEG", quality=85)
    unavailable = encoded(Image.new("RGB", (500, 374), (230, 230, 230)), "PNG")
    for host in builder.hosts:
        builder.mirror.routes[(host, UNAVAILABLE_PATH)] = Route(body=unavailable, content_type="image/png")
    add = builder.add
    add("unavailable", "unavailable", "jpg", good,
        Route(status=302, location="https://s.yimg.com/pw/images/en-us/photo_unavailable.png"))
    add("not_found", "http_error", "jpg", good, Route(status=404, body=b"Not Found",
                                                       content_type="text/html"))
    add("forbidden", "http_error", "jpg", good, Route(status=403, body=b"Forbidden",
                                                       content_type="text/html"))
    add("flaky", "success", "jpg", good, Route(body=good, fail_first=2))
    add("slow_host", "success", "jpg", good, Route(body=good, delay=0.5))
    add("dead", "http_error", "jpg", good, Route(body=good, fail_first=10**9))
    altered = bytearray(good)
    altered[len(altered) // 2] ^= 0xFF
    add("md5_mismatch", "md5_mismatch", "jpg", good, Route(body=bytes(altered)))
    add("size_mismatch", "size_mismatch", "jpg", good, Route(body=good + b"\0" * 100))
    add("cut_mid_body", "connection", "jpg", good, Route(body=good, cut_after=len(good) // 3))
    add("hang", "timeout", "jpg", good, Route(body=good, delay=hang_seconds))
    truncated = encoded(photo(800, 600, 5), "JPEG", quality=90)[:20000]
    add("truncated_jpeg", "corrupt", "jpg", truncated)
    page = b"<html><body>This photo is no longer available</body></html>"
    add("not_image", "not_image", "jpg", page, Route(body=page, content_type="text/html"))
    add("pixel_bomb", "too_large", "png", bomb_png())
    add("refused", "connection", "jpg", good, OriginalURL=refused_url + "refused.jpg")
    add("bad_id", "invalid_row", "jpg", good, ImageID="../../etc/passwd")
    add("bad_scheme", "invalid_row", "jpg", good, OriginalURL="ftp://127.0.0.1/a.jpg")
    add("bad_size", "invalid_row", "jpg", good, OriginalSize="12kb")
    add("bad_md5", "invalid_row", "jpg", good, OriginalMD5="not-an-md5")


# --- the server -------------------------------------------------------------


class Gauge:
    """A count per server address and in total, now and at the most."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.total_now = 0
        self.total_peak = 0

    def up(self, address: str) -> None:
        self.now[address] += 1
        self.peak[address] = max(self.peak[address], self.now[address])
        self.total_now += 1
        self.total_peak = max(self.total_peak, self.total_now)

    def down(self, address: str) -> None:
        self.now[address] -= 1
        self.total_now -= 1

    def reset_peaks(self) -> None:
        self.peak = Counter(self.now)
        self.total_peak = self.total_now


class ConnectionCounter:
    """Connections open and requests being answered, per address and in total.

    A client's idle keep-alive connections stay open between requests, so
    ``connections`` can exceed the requests in flight; ``in_flight`` counts
    connections busy with a request.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections = Gauge()
        self.in_flight = Gauge()
        self.requests: Counter[str] = Counter()  # path -> requests served
        self.user_agents: Counter[str] = Counter()  # User-Agent -> requests that sent it

    def reset_peaks(self) -> None:
        with self.lock:
            self.connections.reset_peaks()
            self.in_flight.reset_peaks()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HostServer

    def setup(self) -> None:
        super().setup()
        with self.server.counter.lock:
            self.server.counter.connections.up(self.server.address)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.counter.lock:
                self.server.counter.connections.down(self.server.address)

    def do_GET(self) -> None:  # noqa: N802
        counter, address = self.server.counter, self.server.address
        with counter.lock:
            counter.in_flight.up(address)
        try:
            self.answer()
        finally:
            with counter.lock:
                counter.in_flight.down(address)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def answer(self) -> None:
        path = self.path.split("?", 1)[0]
        route = self.server.routes.get((self.server.base, path))
        counter = self.server.counter
        with counter.lock:
            counter.requests[path] += 1
            counter.user_agents[self.headers.get("User-Agent", "")] += 1
            attempt = counter.requests[path]
        if route is None:
            return self._send(404, b"not in the mirror", "text/plain")
        if route.delay or self.server.latency:
            time.sleep(route.delay + self.server.latency)
        if attempt <= route.fail_first:
            return self._send(503, b"try again", "text/plain")
        if route.status in (301, 302, 303, 307, 308):
            self.send_response(route.status)
            self.send_header("Location", route.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if route.cut_after is not None:
            self.send_response(200)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body[: route.cut_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        requested = self.headers.get("Range", "")
        if route.ranges and requested.startswith("bytes=") and requested.endswith("-"):
            start = int(requested[len("bytes="):-1])
            if start >= len(route.body):
                return self._send(416, b"", "text/plain")
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(route.body) - 1}/{len(route.body)}")
            self.send_header("Content-Length", str(len(route.body) - start))
            self.end_headers()
            return self._write(route.body[start:], route)
        if route.bytes_per_second:
            self.send_response(route.status)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            return self._write(route.body, route)
        return self._send(route.status, route.body, route.content_type, route.content_encoding, route.headers)

    def _write(self, body: bytes, route: Route) -> None:
        step = route.bytes_per_second or len(body) or 1
        for offset in range(0, len(body), max(step // 10, 1)):
            self.wfile.write(body[offset : offset + max(step // 10, 1)])
            self.wfile.flush()
            if route.bytes_per_second:
                time.sleep(0.1)

    def _send(self, status: int, body: bytes, content_type: str, content_encoding: str = "",
              headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        if content_encoding:
            self.send_header("Content-Encoding", content_encoding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _HostServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hang up mid-answer on purpose (timeouts, stops): not news

    def __init__(self, address: str, routes: dict[tuple[str, str], Route],
                 counter: ConnectionCounter, latency: float) -> None:
        super().__init__((address, 0), _Handler)
        self.address = address
        self.base = f"http://{address}:{self.server_address[1]}"
        self.routes = routes
        self.counter = counter
        self.latency = latency


class MirrorServer:
    """HTTP servers on the given loopback addresses, in background threads.

    Bind first (``bases`` gives the URLs), then ``serve(mirror)``.
    """

    def __init__(self, addresses: tuple[str, ...] = ("127.0.0.1", "127.0.0.2"),
                 latency: float = 0.0) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.counter = ConnectionCounter()
        self.servers = [_HostServer(a, self.routes, self.counter, latency) for a in addresses]
        self.threads: list[threading.Thread] = []

    @property
    def bases(self) -> list[str]:
        return [server.base for server in self.servers]

    def serve(self, mirror: Mirror) -> MirrorServer:
        self.routes.update(mirror.routes)
        for server in self.servers:
            # A short poll: shutdown() waits for the loop to look (0.5 s by default, per server).
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> MirrorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refused_base() -> str:
    """A loopback URL where nothing listens (a port bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def main() -> None:
    parser = argparse.ArgumentParser(description="Build and serve an offline Open Images mirror.")
    parser.add_argument("directory", type=Path, help="where to write images.csv")
    parser.add_argument("--copies", type=int, default=1, help="images of each kind")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    args = parser.parse_args()
    server = MirrorServer(latency=args.latency)
    mirror = build_mirror(server.bases, copies=args.copies, refused_url=refused_base())
    metadata = mirror.write_metadata(args.directory / "images.csv")
    server.serve(mirror)
    print(f"Serving {len(mirror.rows)} rows on {', '.join(server.bases)}; metadata: {metadata}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
