"""A Downloader that really holds CONCURRENT_REQUESTS(_PER_DOMAIN), and can
cut transfers short on a graceful stop.

Scrapy 2.14-2.19 start every queued request of a slot at once when
DOWNLOAD_DELAY is 0: ``_process_queue`` schedules a task per request and the
slot's ``transferring`` set only grows when the task runs. Here the transfer
is reserved before the task is scheduled, and a crawl-wide count caps all
slots together at CONCURRENT_REQUESTS.

It also sets how much Twisted reads from a socket at once
(OPENIMAGES_SOCKET_READ_SIZE): at Twisted's 64 KiB a 1 MB image takes ~16
trips through the HTTP parser and Scrapy's response reader on the event loop.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING

from scrapy import Request
from scrapy.core.downloader import Downloader, Slot
from scrapy.utils.asyncio import call_later
from scrapy.utils.defer import _schedule_coro
from twisted.internet import tcp

from openimages_crawler.crawl.errors import TransferInterrupted

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response


class ConnectionLimitDownloader(Downloader):
    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        # A class attribute of Twisted's: it applies to every TCP connection of the process.
        tcp.Connection.bufferSize = crawler.settings.getint("OPENIMAGES_SOCKET_READ_SIZE")
        self.transferring: set[Request] = set()
        self.waiting_slots: dict[int, Slot] = {}
        self.transfers: set[asyncio.Task[Response]] = set()
        self.interrupted = False

    def total_full(self) -> bool:
        return 0 < self.total_concurrency <= len(self.transferring)

    def _process_queue(self, slot: Slot) -> None:
        if slot.latercall:
            return
        now = monotonic()
        delay = slot.download_delay()
        if delay:
            penalty = delay - now + slot.lastseen
            if penalty > 0:
                slot.latercall = call_later(penalty, self._latercall, slot)
                return
        while slot.queue and slot.free_transfer_slots() > 0:
            if self.total_full():
                self.waiting_slots[id(slot)] = slot
                return
            slot.lastseen = now
            request, queue_dfd = slot.queue.popleft()
            slot.transferring.add(request)  # reserve now, not when the task runs
            self.transferring.add(request)
            _schedule_coro(self._wait_for_download(slot, request, queue_dfd))
            if delay:
                self._process_queue(slot)
                break

    async def _download(self, slot: Slot, request: Request) -> Response:
        transfer = asyncio.ensure_future(super()._download(slot, request))
        self.transfers.add(transfer)
        try:
            return await transfer
        except asyncio.CancelledError:
            if self.interrupted and transfer.cancelled():
                raise TransferInterrupted("download interrupted by a graceful stop") from None
            raise
        finally:
            self.transfers.discard(transfer)
            slot.transferring.discard(request)
            self.transferring.discard(request)
            self.wake_waiting_slots()

    def wake_waiting_slots(self) -> None:
        while self.waiting_slots and not self.total_full():
            _, slot = self.waiting_slots.popitem()
            self._process_queue(slot)

    def interrupt_transfers(self) -> int:
        """Cancel every transfer in progress (graceful stop, after the grace period)."""
        self.interrupted = True
        for transfer in list(self.transfers):
            transfer.cancel()
        return len(self.transfers)

