"""``python3 -m bench.bare URLS --handler KEY [--loop uvloop]``: a bare Scrapy
process that downloads every URL of a URL list (bench's ``url_list_for``
CSV) with one download handler and discards the bodies, so that the CPU the
handler and Scrapy's engine cost per image is measured alone, outside our
crawl. Prints one JSON line: images ok, failures (and the first one), the
process's CPU seconds (user + sys) and the wall seconds from spider_opened
to spider_closed, the CPU it spent before (start-up) and the loop's class."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import resource
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from scrapy import Request, Spider, signals
from scrapy.crawler import Crawler, CrawlerProcess
from scrapy.http import Response
from twisted.python.failure import Failure

from bench.handlers import HANDLERS, LOOPS


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Bare(Spider):
    """Requests every URL once; a response is counted, its body dropped."""

    name = "bare"

    def __init__(self, rows: list[dict[str, str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows = rows
        self.figures: dict[str, Any] = {"images": 0, "failed": 0, "first_failure": None}
        self.opened: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.loop = ""

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Bare:
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.spider_opened, signals.spider_opened)
        return spider

    def spider_opened(self) -> None:
        self.opened = (cpu_seconds(), time.perf_counter(), time.thread_time())  # on the loop's thread
        loop = type(asyncio.get_event_loop())
        self.loop = f"{loop.__module__}.{loop.__qualname__}"  # shows that ASYNCIO_EVENT_LOOP took

    async def start(self) -> AsyncIterator[Request]:
        for row in self.rows:
            yield Request(row["url"], cb_kwargs={"size": int(row["size"])}, errback=self.failed, dont_filter=True)

    def parse(self, response: Response, size: int) -> None:
        self.figures["images" if len(response.body) == size else "failed"] += 1

    def failed(self, failure: Failure) -> None:
        self.figures["failed"] += 1
        self.figures["first_failure"] = self.figures["first_failure"] or repr(failure.value)[:300]

    def closed(self, reason: str) -> None:
        cpu, wall = cpu_seconds() - self.opened[0], time.perf_counter() - self.opened[1]
        loop_cpu = time.thread_time() - self.opened[2]
        images = self.figures["images"]
        print(json.dumps({
            **self.figures,
            "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3),
            "cpu_ms_per_image": round(1000 * cpu / images, 2) if images else None,
            # The event loop's thread alone: what our crawl's report counts as its event loop.
            "loop_cpu_ms_per_image": round(1000 * loop_cpu / images, 2) if images else None,
            "startup_cpu_s": round(self.opened[0], 3),
            "loop": self.loop,
        }), flush=True)


def settings(handler: str, loop: str) -> dict[str, Any]:
    """Scrapy's defaults but for the handler, the loop, and what a plain image
    download needs (no retries, cookies, redirects or robots.txt); certificates
    are not checked (Scrapy's default DOWNLOAD_VERIFY_CERTIFICATES=False)."""
    chosen = {"ASYNCIO_EVENT_LOOP": LOOPS[loop]} if LOOPS[loop] else {}
    return {
        "DOWNLOAD_HANDLERS": {"http": HANDLERS[handler], "https": HANDLERS[handler]},
        "TWISTED_REACTOR": "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
        "CONCURRENT_REQUESTS": 128,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 16,
        "DOWNLOAD_DELAY": 0,
        "RETRY_ENABLED": False,
        "COOKIES_ENABLED": False,
        "REDIRECT_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "TELNETCONSOLE_ENABLED": False,
        "LOG_LEVEL": "WARNING",
        **chosen,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("urls", type=Path)
    parser.add_argument("--handler", choices=sorted(HANDLERS), required=True)
    parser.add_argument("--loop", choices=sorted(LOOPS), default="asyncio")
    parser.add_argument("--read-size", type=int, default=0,
                        help="bytes Twisted reads from a socket at once (0: its own 64 KiB), as our crawl sets it")
    args = parser.parse_args()
    if args.read_size:
        from twisted.internet import tcp

        tcp.Connection.bufferSize = args.read_size
    with open(args.urls, newline="") as handle:
        rows = list(csv.DictReader(handle))
    process = CrawlerProcess(settings(args.handler, args.loop))
    process.crawl(Bare, rows=rows)
    process.start()


if __name__ == "__main__":
    main()
