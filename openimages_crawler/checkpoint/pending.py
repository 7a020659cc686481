"""Rows whose images wait in open packs: recorded only once every pack that
holds them is published (``outputs.containers``), so the results never name an
image a kill -9 could still take away. Scrapy-free and thread-safe: packs
are published from worker threads, rows are added and released on the
event loop."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

Row = TypeVar("Row")


@dataclass(eq=False, slots=True)
class _Waiting(Generic[Row]):
    row: Row
    packs_left: int


class PendingRows(Generic[Row]):
    """Results held until the packs named by their tickets are published."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.waiting: dict[str, list[_Waiting[Row]]] = {}  # by ticket
        self.published: set[str] = set()  # tickets published before (or while) their rows were added
        self.ready: list[Row] = []

    def add(self, row: Row, tickets: Iterable[str]) -> bool:
        """Hold ``row`` until its packs are published; ``False`` when they all are already."""
        with self.mutex:
            open_tickets = [ticket for ticket in set(tickets) if ticket not in self.published]
            if not open_tickets:
                return False
            entry = _Waiting(row, len(open_tickets))
            for ticket in open_tickets:
                self.waiting.setdefault(ticket, []).append(entry)
            return True

    def publish(self, tickets: Iterable[str]) -> None:
        """These packs are in the store: their rows whose packs all are become ready."""
        with self.mutex:
            for ticket in tickets:
                self.published.add(ticket)
                for entry in self.waiting.pop(ticket, []):
                    entry.packs_left -= 1
                    if not entry.packs_left:
                        self.ready.append(entry.row)

    def take_ready(self) -> list[Row]:
        """The rows ready to be recorded, once each."""
        with self.mutex:
            ready, self.ready = self.ready, []
        return ready

    def __len__(self) -> int:
        """Rows still waiting."""
        with self.mutex:
            return len({id(entry) for entries in self.waiting.values() for entry in entries})
