"""How download errors and HTTP statuses map onto FailureReason codes."""

from __future__ import annotations

from scrapy.exceptions import (
    DownloadCancelledError,
    DownloadTimeoutError,
    IgnoreRequest,
    ResponseDataLossError,
    UsageError,
)
from scrapy.http import Response

# HttpCompressionMiddleware's cause for an IgnoreRequest over DOWNLOAD_MAXSIZE.
from scrapy.utils._compression import _DecompressionMaxSizeExceeded
from twisted.internet import error as twisted_errors
from twisted.python.failure import Failure

from openimages_crawler.crawl.hosts import BlockedHost
from openimages_crawler.reasons import (
    BLOCKED_HOST,
    CONNECTION,
    HTTP_ERROR,
    TIMEOUT,
    TOO_LARGE,
    UNAVAILABLE,
)

_TIMEOUTS = (DownloadTimeoutError, twisted_errors.TimeoutError, TimeoutError)


class ShardLocked(UsageError):
    """The store's shard is held by another crawl (not this crawl's own mistake)."""


class TransferInterrupted(Exception):
    """A download cut off by a graceful stop; the row is left for the next run."""


def status_failure(response: Response) -> tuple[str, str] | None:
    """Reason and details for a non-200 response, ``None`` for a 200."""
    status = response.status
    if status == 200:
        return None
    retries = response.meta.get("retry_times", 0)
    after = f" after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
    if 300 <= status < 400:
        location = response.headers.get(b"Location", b"").decode("latin-1")
        target = f" to {location}" if location else ""
        return UNAVAILABLE, f"HTTP {status} redirect{target} (not followed)"
    if status >= 400:
        return HTTP_ERROR, f"HTTP {status}{after}"
    return HTTP_ERROR, f"HTTP {status} is not a complete image response"


def exception_failure(failure: Failure, retries: int) -> tuple[str, str]:
    """Reason and details for a download that raised instead of answering."""
    exc = failure.value
    after = f" after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    if isinstance(exc, BlockedHost):
        return BLOCKED_HOST, str(exc)
    if isinstance(exc, DownloadCancelledError) or (
        isinstance(exc, IgnoreRequest) and isinstance(exc.__cause__, _DecompressionMaxSizeExceeded)
    ):  # the body, or what a Content-Encoding inflates it to
        return TOO_LARGE, f"{exc} (DOWNLOAD_MAXSIZE)"
    if isinstance(exc, (*_TIMEOUTS, twisted_errors.TCPTimedOutError)):
        return TIMEOUT, f"{text}{after}"
    if isinstance(exc, ResponseDataLossError):
        return CONNECTION, f"body cut short before Content-Length was reached{after}"
    # Refused, reset, DNS, TLS and every other transport error.
    return CONNECTION, f"{text}{after}"
