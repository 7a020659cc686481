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
Run ``python -m openimages_crawler.mirror DIR`` to build and serve one.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image, ImageDraw

from .catalogue import IMAGES_CSV_COLUMNS

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


# --- image kinds --------------------------------------------------------------


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB picture: gradients, shapes and noise (compresses like a photo)."""
    base = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize((width, height)),
            Image.radial_gradient("L").resize((width, height)),
            Image.effect_noise((width, height), 40 + seed % 30),
        ),
    )
    draw = ImageDraw.Draw(base)
    for index in range(6):
        x = (seed * 37 + index * 101) % max(width, 1)
        y = (seed * 53 + index * 67) % max(height, 1)
        colour = ((seed * 40 + index * 70) % 256, (index * 90) % 256, (seed * 15) % 256)
        draw.ellipse((x - width // 8, y - height // 8, x + width // 8, y + height // 8), fill=colour)
    return base


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _exif_rotated_jpeg(seed: int) -> bytes:
    """A 300x200 landscape stored as 200x300 pixels plus orientation 6 (rotate 90 CW)."""
    upright = _photo(300, 200, seed)
    draw = ImageDraw.Draw(upright)
    draw.rectangle((0, 0, 60, 40), fill=(255, 0, 0))  # red marker: top-left when upright
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(stored, "JPEG", quality=90, exif=exif.tobytes())


def _sixteen_bit_png(seed: int) -> bytes:
    gradient = Image.linear_gradient("L").resize((320, 240))
    wide = gradient.convert("I").point(lambda value: value * 257)
    return _save(wide.convert("I;16"), "PNG")


def _palette_png_with_transparency(seed: int) -> bytes:
    image = _photo(260, 180, seed).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return _save(image, "PNG", transparency=0)


def _rgba_png(seed: int) -> bytes:
    image = _photo(400, 300, seed).convert("RGBA")
    alpha = Image.linear_gradient("L").resize((400, 300))
    image.putalpha(alpha)
    return _save(image, "PNG")


def _la_png(seed: int) -> bytes:
    image = _photo(240, 240, seed).convert("LA")
    return _save(image, "PNG")


def _bomb_png(side: int = 40000) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` pixels that compresses to a few
    hundred KB, built row by row so making it costs no memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


IMAGE_KINDS: dict[str, tuple[str, object]] = {
    # kind: (extension, maker(seed) -> bytes)
    "jpeg_large": ("jpg", lambda s: _save(_photo(1600, 1067, s), "JPEG", quality=88)),
    "jpeg_portrait": ("jpg", lambda s: _save(_photo(600, 900, s), "JPEG", quality=88)),
    "jpeg_small": ("jpg", lambda s: _save(_photo(160, 120, s), "JPEG", quality=88)),
    "jpeg_progressive": (
        "jpg",
        lambda s: _save(_photo(800, 600, s), "JPEG", quality=85, progressive=True),
    ),
    "jpeg_cmyk": ("jpg", lambda s: _save(_photo(500, 400, s).convert("CMYK"), "JPEG", quality=90)),
    "jpeg_gray": ("jpg", lambda s: _save(_photo(640, 480, s).convert("L"), "JPEG", quality=90)),
    "jpeg_exif_rotated": ("jpg", _exif_rotated_jpeg),
    "png_rgb": ("png", lambda s: _save(_photo(500, 350, s), "PNG")),
    "png_rgba": ("png", _rgba_png),
    "png_palette": ("png", _palette_png_with_transparency),
    "png_gray_alpha": ("png", _la_png),
    "png_16bit": ("png", _sixteen_bit_png),
    "gif": ("jpg", lambda s: _save(_photo(300, 200, s).convert("P"), "GIF")),
}

TITLES = [
    "Sunset over the bay",
    "O&#x27;Neil &amp; friends, \"at home\"",
    "Ça va? — día de campo, 東京",
    "Line one\nline two",
    "",
]


def _image_id(index: int) -> str:
    return hashlib.sha1(f"openimages-mirror-{index}".encode()).hexdigest()[:16]


def _row(
    image_id: str, subset: str, url: str, body: bytes, index: int, *, size: str | None = None,
    md5: str | None = None,
) -> dict[str, str]:
    return {
        "ImageID": image_id,
        "Subset": subset,
        "OriginalURL": url,
        "OriginalLandingURL": f"https://www.flickr.com/photos/mirror/{index}",
        "License": "https://creativecommons.org/licenses/by/2.0/",
        "AuthorProfileURL": f"https://www.flickr.com/people/mirror{index}/",
        "Author": f"Author {index}, Jr.",
        "Title": TITLES[index % len(TITLES)],
        "OriginalSize": str(len(body)) if size is None else size,
        "OriginalMD5": base64.b64encode(hashlib.md5(body).digest()).decode() if md5 is None else md5,
        "Thumbnail300KURL": f"{url.rsplit('.', 1)[0]}_z.jpg" if index % 7 else "",
        "Rotation": "0",
    }


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
    mirror = Mirror()
    index = 0

    def add(kind: str, expected: str, ext: str, body: bytes, route: Route | None = None,
            **row_overrides: str) -> None:
        nonlocal index
        host = hosts[index % len(hosts)]
        image_id = _image_id(index)
        path = f"/{index % 8}/{image_id}_{kind}.{ext}"
        fields = _row(image_id, subset, host + path, body, index)
        fields.update(row_overrides)
        mirror.rows.append(MirrorRow(fields, expected, kind))
        mirror.routes[(host, path)] = route or Route(
            body=body, content_type="image/png" if ext == "png" else "image/jpeg"
        )
        index += 1

    for copy in range(copies):
        for kind, (ext, maker) in IMAGE_KINDS.items():
            add(kind, "success", ext, maker(index * 7 + copy))  # type: ignore[operator]
    if not faults:
        return mirror

    good = _save(_photo(400, 300, 99), "JPEG", quality=85)
    unavailable = _save(Image.new("RGB", (500, 374), (230, 230, 230)), "PNG")
    for host in hosts:
        mirror.routes[(host, UNAVAILABLE_PATH)] = Route(body=unavailable, content_type="image/png")
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
    truncated = _save(_photo(800, 600, 5), "JPEG", quality=90)[:20000]
    add("truncated_jpeg", "corrupt", "jpg", truncated)
    page = b"<html><body>This photo is no longer available</body></html>"
    add("not_image", "not_image", "jpg", page, Route(body=page, content_type="text/html"))
    add("pixel_bomb", "too_large", "png", _bomb_png())
    add("refused", "connection", "jpg", good, OriginalURL=refused_url + "refused.jpg")
    add("bad_id", "invalid_row", "jpg", good, ImageID="../../etc/passwd")
    add("bad_scheme", "invalid_row", "jpg", good, OriginalURL="ftp://127.0.0.1/a.jpg")
    add("bad_size", "invalid_row", "jpg", good, OriginalSize="12kb")
    add("bad_md5", "invalid_row", "jpg", good, OriginalMD5="not-an-md5")
    return mirror


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
        return self._send(route.status, route.body, route.content_type)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
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
            thread = threading.Thread(target=server.serve_forever, daemon=True)
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
