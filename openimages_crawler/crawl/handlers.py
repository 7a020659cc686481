"""The HTTP(S) download handler, chosen by OPENIMAGES_DOWNLOAD_HANDLER.

``aiohttp`` (the default) is scrapy-download-handlers-incubator's aiohttp
handler: about a third less event-loop CPU per image than Twisted's over
HTTP and HTTPS (bench/results/handlers.md). ``twisted`` is Scrapy's own
HTTP/1.1 handler, kept as the fallback.

aiohttp makes its own DNS lookups and skips them for IP literals, so the
address guard of hosts.py (OPENIMAGES_BLOCK_PRIVATE_HOSTS) is put on both
here: every answer of its resolver, and the IP literal of a URL (or of its
proxy), pass the same check as Twisted's lookups, and a refusal reaches
``BlockedHostMiddleware`` as the same failed lookup.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING, Any, ClassVar

from aiohttp.abc import AbstractResolver
from scrapy.exceptions import CannotResolveHostError, UsageError
from scrapy.utils.httpobj import urlparse_cached
from scrapy_download_handlers_incubator.handlers.aiohttp import AiohttpDownloadHandler
from twisted.internet.error import DNSLookupError

from openimages_crawler.crawl.hosts import PublicAddressResolver, installed_guard, proxy_host

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings

# OPENIMAGES_DOWNLOAD_HANDLER's names -> the handler class for http:// and https://.
HANDLERS = {
    "aiohttp": "openimages_crawler.crawl.handlers.GuardedAiohttpHandler",
    "twisted": "scrapy.core.downloader.handlers.http11.HTTP11DownloadHandler",
}


class HandlerChoice:
    """A Scrapy add-on: OPENIMAGES_DOWNLOAD_HANDLER becomes DOWNLOAD_HANDLERS
    before the crawler is built (a scheme's handler given in DOWNLOAD_HANDLERS
    with -s still wins)."""

    def update_settings(self, settings: BaseSettings) -> None:
        name = str(settings["OPENIMAGES_DOWNLOAD_HANDLER"])
        if name not in HANDLERS:
            raise UsageError(f"OPENIMAGES_DOWNLOAD_HANDLER={name!r} is not a download handler "
                             f"(one of: {', '.join(HANDLERS)})")
        for scheme in ("http", "https"):  # per key: a scheme given with -s keeps its handler
            settings["DOWNLOAD_HANDLERS"].set(scheme, HANDLERS[name], "addon")


class PublicAnswers(AbstractResolver):
    """aiohttp's resolver, refusing what the crawl's guard refuses."""

    def __init__(self, inner: AbstractResolver, guard: PublicAddressResolver) -> None:
        self.inner = inner
        self.guard = guard

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = await self.inner.resolve(host, port, family)
        try:  # IPv4 first: the refusal names the address Twisted's IPv4 lookup would have
            for answer in sorted(answers, key=lambda answer: answer["family"] != socket.AF_INET):
                self.guard.check(host, answer["host"])
        except DNSLookupError as refused:
            raise OSError(str(refused)) from None  # aiohttp reports it as a failed lookup
        return answers

    async def close(self) -> None:
        await self.inner.close()


class GuardedAiohttpHandler(AiohttpDownloadHandler):
    """The incubator's aiohttp handler with the crawl's address guard."""

    # Chosen and tested here (every fault of the mirror, the guard, the limits, Ctrl-C): no
    # "experimental" warning on every crawl.
    experimental: ClassVar[bool] = False

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self.guard = installed_guard()
        if self.guard is not None:
            connector: Any = self._session.connector
            connector._resolver = PublicAnswers(connector._resolver, self.guard)  # aiohttp pinned

    async def download_request(self, request: Request) -> Response:
        if self.guard is not None:
            proxy = request.meta.get("proxy")
            host = (proxy_host(proxy) if proxy else urlparse_cached(request).hostname) or ""
            if _is_ip_literal(host):  # aiohttp connects to these without asking its resolver
                try:
                    self.guard.check(host, host)
                except DNSLookupError as refused:
                    raise CannotResolveHostError(str(refused)) from None
        return await super().download_request(request)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
