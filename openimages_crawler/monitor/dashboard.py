"""The web view (``OPENIMAGES_DASHBOARD_PORT``): a page served on 127.0.0.1 from
inside the crawl, with the live figures, a throughput chart, the latest
images and the latest failures.

Served by Twisted's web server on the crawl's own reactor. Thumbnails are the
stored outputs of the latest successes, read only when the page asks for
them: nothing is added to the hot path. The page is one HTML file with its
script inline (no CDN: the machine may be offline).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import count
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import NotConfigured, UsageError
from twisted.internet import threads
from twisted.web import resource, server

from openimages_crawler.checkpoint.results import FailureRow, SuccessRow
from openimages_crawler.crawl.config import CrawlConfig, open_crawl_store
from openimages_crawler.crawl.run import CrawlRun
from openimages_crawler.dataset.rows import SAFE_ID
from openimages_crawler.monitor.extensions import (
    RECENT_FAILURES,
    failure_entry,
    progress_sampled,
    thumbnail_key,
)
from openimages_crawler.monitor.progress import Counts, ProgressMeter, Rates, figures
from openimages_crawler.monitor.report import throughput
from openimages_crawler.monitor.status import ImageEntry, PartStatus, latest_entries
from openimages_crawler.store.base import Store
from openimages_crawler.store.layout import is_subset_name

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings
    from twisted.internet.interfaces import IListeningPort
    from twisted.web.server import Request

logger = logging.getLogger(__name__)

_CHART_POINTS = 120
_CONTENT_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


@dataclass(frozen=True, slots=True)
class RecentImage:
    serial: int
    subset: str
    image_id: str
    key: str  # in the store


class DashboardServer:
    """The web view's figures and its HTTP server on the reactor."""

    def __init__(self, port: int, config: CrawlConfig, store: Store, images_shown: int) -> None:
        self.port = port
        self.config = config
        self.store = store
        self.images: deque[RecentImage] = deque(maxlen=max(images_shown, 1))
        self.failures: deque[dict[str, str]] = deque(maxlen=RECENT_FAILURES)
        self.serials = count(1)
        self.counts = Counts(0.0)
        self.rates = Rates()
        self.meter: ProgressMeter | None = None
        self.finished = False
        self.listening: IListeningPort | None = None
        self.address: str | None = None  # where it is served (kept after it stops, for the summary)

    @classmethod
    def from_settings(cls, settings: BaseSettings, config: CrawlConfig | None = None,
                      store: Store | None = None) -> Self | None:
        """The web view ``OPENIMAGES_DASHBOARD_PORT`` asks for, or ``None``."""
        port = settings.get("OPENIMAGES_DASHBOARD_PORT")
        if port is None or port == "":
            return None
        try:
            number = int(port)
        except ValueError:
            number = -1
        if not 0 <= number <= 65535:
            raise UsageError(f"OPENIMAGES_DASHBOARD_PORT={port!r} is not a port number (0-65535)")
        config = config or CrawlConfig.from_settings(settings)
        return cls(number, config, store or open_crawl_store(settings),
                   settings.getint("OPENIMAGES_DASHBOARD_IMAGES"))

    def listen(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.error import CannotListenError

        root = _LocalOnly(self)
        root.putChild(b"", _Static(PAGE.encode(), b"text/html; charset=utf-8"))
        root.putChild(b"status.json", _Status(self))
        root.putChild(b"image", _Images(self))
        try:
            self.listening = reactor.listenTCP(self.port, server.Site(root), interface="127.0.0.1")  # type: ignore[attr-defined]
        except CannotListenError as exc:
            raise UsageError(f"OPENIMAGES_DASHBOARD_PORT={self.port}: cannot listen on 127.0.0.1: {exc}") from None
        self.address = f"http://127.0.0.1:{self.bound_port}/"
        logger.info("Dashboard: %s", self.address)

    @property
    def bound_port(self) -> int:
        assert self.listening is not None
        return self.listening.getHost().port  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.finished = True
        if self.listening is not None:
            self.listening.stopListening()
            self.listening = None

    def add(self, item: object) -> None:
        """A results row: a success's image joins the latest images, a failure the latest failures."""
        if isinstance(item, SuccessRow):
            key = thumbnail_key(self.config, item.subset, item["ImageID"])
            if key is not None:
                self.images.appendleft(RecentImage(next(self.serials), item.subset, item["ImageID"], key))
        elif isinstance(item, FailureRow):
            self.failures.appendleft(failure_entry(item))

    def progress_sampled(self, counts: Counts, rates: Rates, meter: ProgressMeter) -> None:
        self.counts, self.rates, self.meter = counts, rates, meter

    def show_records(self, counts: Counts, meter: ProgressMeter, records: list[PartStatus]) -> None:
        """A supervisor's view (several processes, or a fleet's jobs): the
        summed figures and the records' latest failures and images."""
        self.progress_sampled(counts, meter.rates(), meter)
        self.show_failures(latest_entries([record.recent_failures for record in records]))
        self.show_images(latest_entries([record.recent_images for record in records]))

    def show_failures(self, entries: Iterable[dict[str, str]]) -> None:
        """The latest failures, newest first (a supervisor's, from its processes' records)."""
        self.failures.clear()
        self.failures.extend(entries)

    def show_images(self, entries: Iterable[ImageEntry]) -> None:
        """The latest images, newest first (from the processes' records: only
        those ``servable``); an image already shown keeps its serial, so its
        address stays valid."""
        shown = {image.key: image for image in self.images}
        latest = [shown.get(entry["key"]) or RecentImage(next(self.serials), entry["subset"], entry["image_id"],
                                                         entry["key"])
                  for entry in entries if self.servable(entry)]
        self.images.clear()
        self.images.extend(latest[: self.images.maxlen])

    def servable(self, entry: ImageEntry) -> bool:
        """Whether a record's image is one this view may read: the file the
        layout gives a plain subset and ImageID in the first resized output.
        Anyone who writes to the store can write a record, naming any key
        (``../../etc/passwd``, ``/etc/passwd``, ``train/images-success.csv``)."""
        subset, image_id = entry["subset"], entry["image_id"]
        return (is_subset_name(subset) and SAFE_ID.fullmatch(image_id) is not None
                and entry["key"] == thumbnail_key(self.config, subset, image_id))

    def status(self) -> dict[str, Any]:
        counts, rates = self.counts, self.rates
        history = (self.meter.history if self.meter else [])[-_CHART_POINTS:] + [counts]
        return {
            "elapsed_s": round(counts.time, 1),
            "finished": self.finished,
            **figures(counts, rates),
            "ok": counts.ok,
            "failed": counts.failed,
            "failures": counts.failures,
            "throughput": throughput(history),
            "images": [
                {"src": f"image/{image.serial}", "image_id": image.image_id, "subset": image.subset}
                for image in self.images
            ],
            "recent_failures": list(self.failures),
        }

    def image(self, serial: int) -> RecentImage | None:
        """One of the latest images, by serial: nothing else can be asked for."""
        return next((image for image in self.images if image.serial == serial), None)


class Dashboard(DashboardServer):
    """The extension: the web view of this crawl, fed by its signals."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        run = CrawlRun.of(crawler)
        extension = cls.from_settings(crawler.settings, run.config, run.store)
        if extension is None:
            raise NotConfigured
        extension.listen()  # now: a busy port stops the crawl before any download
        crawler.signals.connect(extension.stop, signal=signals.spider_closed)
        crawler.signals.connect(extension.add, signal=signals.item_scraped)
        crawler.signals.connect(extension.progress_sampled, signal=progress_sampled)
        return extension


class _LocalOnly(resource.Resource):
    """The root: refuses requests whose Host is not this address (a web page
    elsewhere could otherwise reach it by DNS rebinding)."""

    def __init__(self, dashboard: DashboardServer) -> None:
        super().__init__()
        self.dashboard = dashboard

    def getChildWithDefault(self, path: bytes, request: Request) -> resource.Resource:  # noqa: N802
        port = self.dashboard.bound_port
        allowed = {f"127.0.0.1:{port}".encode(), f"localhost:{port}".encode()}
        if request.getHeader(b"host") not in allowed:
            return resource.ErrorPage(403, "Forbidden", "Use http://127.0.0.1:PORT/")
        return super().getChildWithDefault(path, request)


class _Static(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body, self.content_type = body, content_type

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-store")
        return self.body


class _Status(resource.Resource):
    isLeaf = True

    def __init__(self, dashboard: DashboardServer) -> None:
        super().__init__()
        self.dashboard = dashboard

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self.dashboard.status()).encode()


class _Images(resource.Resource):
    isLeaf = True

    def __init__(self, dashboard: DashboardServer) -> None:
        super().__init__()
        self.dashboard = dashboard

    def render_GET(self, request: Request) -> bytes | int:  # noqa: N802
        path = request.postpath
        found = self.dashboard.image(int(path[0])) if len(path) == 1 and path[0].isdigit() else None
        if found is None:
            return self.missing(request)
        # In a thread: an object store's read is a request, which must not stall the crawl.
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))  # the browser left
        reading = threads.deferToThread(self.dashboard.store.read, found.key)
        reading.addCallback(self.send, request, found.key)
        reading.addErrback(lambda _: self.missing(request))
        reading.addCallback(self.deliver, request, gone)
        return server.NOT_DONE_YET

    @staticmethod
    def deliver(body: bytes, request: Request, gone: list[bool]) -> None:
        if not gone:
            request.write(body)
            request.finish()

    @staticmethod
    def send(body: bytes, request: Request, key: str) -> bytes:
        request.setHeader(b"content-type", _CONTENT_TYPES.get(PurePosixPath(key).suffix, "application/octet-stream").encode())
        request.setHeader(b"cache-control", b"max-age=3600")
        return body

    @staticmethod
    def missing(request: Request) -> bytes:
        request.setResponseCode(404)
        return b"not one of the latest images"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>openimages-crawler</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .5em; } .sub { color: #666; }
.cards { display: flex; flex-wrap: wrap; gap: .5em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .4em .7em; min-width: 8em; }
.card b { display: block; font-size: 1.3em; } .card span { color: #666; }
canvas { width: 100%; max-width: 60em; height: 140px; border: 1px solid #eee; background: #fafafa; }
#images { display: flex; flex-wrap: wrap; gap: 4px; }
#images img { height: 96px; border-radius: 3px; background: #eee; }
table { border-collapse: collapse; } td, th { border-bottom: 1px solid #eee; padding: .15em .5em; text-align: left; }
td.url { max-width: 30em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; color: #666; }
</style></head><body>
<h1>openimages-crawler <span class=sub id=state>connecting…</span></h1>
<div class=cards>
 <div class=card><b id=done>0</b><span>rows done <span id=total></span></span></div>
 <div class=card><b id=ok>0</b><span>stored</span></div>
 <div class=card><b id=failed>0</b><span>failed</span></div>
 <div class=card><b id=rate>0</b><span>images/s</span></div>
 <div class=card><b id=mbin>0</b><span>MB/s downloaded</span></div>
 <div class=card><b id=mbout>0</b><span>MB/s written</span></div>
 <div class=card><b id=eta>?</b><span>ETA</span></div>
 <div class=card><b id=active>0 / 0</b><span>downloading / in workers</span></div>
</div>
<h2>Throughput (images/s)</h2><canvas id=chart width=960 height=140></canvas>
<h2>Latest images</h2><div id=images></div>
<h2>Latest failures</h2><p class=sub id=reasons></p>
<table><thead><tr><th>ImageID</th><th>reason</th><th>details</th><th>URL</th></tr></thead><tbody id=failures></tbody></table>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (n) => n.toLocaleString("en-US");
function duration(s) {
  if (s === null || s === undefined) return "?";
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
}
function drawChart(points) {
  const canvas = $("chart"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (points.length < 2) return;
  const top = Math.max(1, ...points.map((p) => p.images_per_s));
  const x0 = points[0].t, x1 = points[points.length - 1].t || 1;
  ctx.strokeStyle = "#2a6fdb"; ctx.lineWidth = 2; ctx.beginPath();
  points.forEach((p, i) => {
    const x = 10 + (p.t - x0) / ((x1 - x0) || 1) * (canvas.width - 20);
    const y = canvas.height - 10 - p.images_per_s / top * (canvas.height - 30);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#555"; ctx.font = "12px sans-serif"; ctx.fillText("max " + top.toFixed(1), 12, 14);
}
function showImages(images) {
  const box = $("images"), wanted = new Set(images.map((i) => i.src));
  for (const img of [...box.children]) if (!wanted.has(img.dataset.src)) img.remove();
  const have = new Set([...box.children].map((img) => img.dataset.src));
  for (const image of [...images].reverse()) {
    if (have.has(image.src)) continue;
    const img = document.createElement("img");
    img.dataset.src = image.src; img.alt = image.image_id; img.title = image.subset + "/" + image.image_id;
    img.onload = () => { img.dataset.loaded = "1"; };
    img.src = image.src;
    box.prepend(img);
  }
}
function showFailures(rows, reasons) {
  $("reasons").textContent = Object.entries(reasons).sort((a, b) => b[1] - a[1]).map(([r, n]) => r + " " + n).join(", ");
  const body = $("failures"); body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const [key, cls] of [["image_id", ""], ["reason", ""], ["details", ""], ["url", "url"]]) {
      const td = document.createElement("td"); td.textContent = row[key]; if (cls) td.className = cls; tr.append(td);
    }
    body.append(tr);
  }
}
async function refresh() {
  try {
    const s = await (await fetch("status.json", {cache: "no-store"})).json();
    $("done").textContent = fmt(s.rows_done);
    $("total").textContent = s.rows_total ? "of " + fmt(s.rows_total) : "";
    $("ok").textContent = fmt(s.ok); $("failed").textContent = fmt(s.failed);
    $("rate").textContent = s.images_per_s.toFixed(1);
    $("mbin").textContent = s.mb_in_per_s.toFixed(1); $("mbout").textContent = s.mb_out_per_s.toFixed(1);
    $("eta").textContent = duration(s.eta_s);
    $("active").textContent = s.downloading + " / " + s.in_workers;
    $("state").textContent = s.finished ? "finished" : "running for " + duration(Math.round(s.elapsed_s));
    drawChart(s.throughput); showImages(s.images); showFailures(s.recent_failures, s.failures);
  } catch (e) {
    $("state").textContent = "crawl not reachable (finished?)";
  }
}
refresh(); setInterval(refresh, 1000);
</script>
</body></html>
"""
