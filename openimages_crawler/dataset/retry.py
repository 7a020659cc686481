"""``-a retry_failed``: which recorded failures a run tries again."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openimages_crawler.reasons import CONNECTION, FAILURE_REASONS, HTTP_ERROR, OPTED_OUT, TIMEOUT

if TYPE_CHECKING:
    import pandas as pd

TRANSIENT = "transient"  # timeout, connection, and http_error for 5xx and 429
_TRANSIENT_HTTP = r"HTTP (?:5\d\d|429)\b"


@dataclass(frozen=True, slots=True)
class RetryFilter:
    reasons: frozenset[str]  # retried whatever their details
    transient: bool = False

    @classmethod
    def parse(cls, text: str) -> RetryFilter:
        """Comma-separated FailureReason codes and/or ``transient``."""
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in FAILURE_REASONS and name != TRANSIENT]
        if unknown or not names:
            raise ValueError(f"-a retry_failed={text!r}: give FailureReason codes or {TRANSIENT} "
                             f"(codes: {', '.join(FAILURE_REASONS)})")
        if OPTED_OUT in names:
            raise ValueError(f"-a retry_failed: {OPTED_OUT} is final (the publisher said no); "
                             "give other FailureReason codes")
        return cls(frozenset(names) - {TRANSIENT}, TRANSIENT in names)

    def matches(self, reason: str, details: str) -> bool:
        if reason in self.reasons:
            return True
        if not self.transient:
            return False
        return reason in (TIMEOUT, CONNECTION) or (reason == HTTP_ERROR and bool(re.match(_TRANSIENT_HTTP, details)))

    def mask(self, reasons: pd.Series, details: pd.Series) -> pd.Series:
        """``matches`` over columns of a results file."""
        chosen = reasons.isin(self.reasons)
        if self.transient:
            chosen |= reasons.isin([TIMEOUT, CONNECTION])
            chosen |= (reasons == HTTP_ERROR) & details.str.match(_TRANSIENT_HTTP)
        return chosen
