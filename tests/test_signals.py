"""The crawl command's signal handler: safe when a second signal lands inside
the first one's handling (a SIGTERM from the dying parent on top of the
test's or the user's own)."""

from __future__ import annotations

import signal
import threading
from types import SimpleNamespace
from typing import Any

from openimages_crawler.crawl.stop import STOP_REQUESTED
from openimages_crawler.run.crawl import note_signals


def test_a_second_signal_inside_the_first_ones_event_set_does_not_deadlock() -> None:
    stopped: list[int] = []
    process: Any = SimpleNamespace(_signal_shutdown=lambda signum, frame: stopped.append(signum))
    received: list[int] = []
    note_signals(process, received)
    handler: Any = process._signal_shutdown
    try:
        handler(signal.SIGTERM, None)
        assert STOP_REQUESTED.is_set()
        # As if the first handler were still inside Event.set, holding its lock (not re-entrant).
        with STOP_REQUESTED._cond:  # type: ignore[attr-defined]
            second = threading.Thread(target=handler, args=(signal.SIGTERM, None), daemon=True)
            second.start()
            second.join(timeout=5)
            assert not second.is_alive(), "the second signal's handler waits on the first one's lock"
        assert received == [signal.SIGTERM, signal.SIGTERM] and stopped == received  # Scrapy's handler both times
    finally:
        STOP_REQUESTED.clear()
