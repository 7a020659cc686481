"""The download handlers the handler probe compares (bench/handler_probes.py),
by the key ``python3 -m bench.bare --handler`` takes, and the event loops.
Imports nothing: the bare process's start-up stays Scrapy's own."""

from __future__ import annotations

HANDLERS = {
    "twisted": "scrapy.core.downloader.handlers.http11.HTTP11DownloadHandler",
    "httpx": "scrapy.core.downloader.handlers._httpx.HttpxDownloadHandler",
    "aiohttp": "scrapy_download_handlers_incubator.handlers.aiohttp.AiohttpDownloadHandler",
    "curl_cffi": "scrapy_download_handlers_incubator.handlers.curl_cffi.CurlCffiDownloadHandler",
}
# ASYNCIO_EVENT_LOOP of each loop (None: asyncio's own).
LOOPS: dict[str, str | None] = {"asyncio": None, "uvloop": "uvloop.Loop"}
CONFIGURATIONS = [(handler, loop) for handler in HANDLERS for loop in LOOPS]
