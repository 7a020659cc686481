"""In-process crawls (Scrapy's own way: ``get_crawler`` on the test's asyncio
reactor, pytest-twisted) of the real spider, pipeline and downloader against
the local mirror: faster than a subprocess, and the crawler's stats and
components can be inspected."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from scrapy.exceptions import (
    CannotResolveHostError,
    DownloadTimeoutError,
    ResponseDataLossError,
    UsageError,
)
from scrapy.http import Request, Response
from scrapy.settings import SETTINGS_PRIORITIES
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.misc import load_object
from scrapy.utils.test import get_crawler
from twisted.internet import error as twisted_errors
from twisted.python.failure import Failure

from openimages_crawler.crawl import errors
from openimages_crawler.crawl.downloader import ConnectionLimitDownloader
from openimages_crawler.crawl.handlers import HANDLERS, HandlerChoice
from openimages_crawler.crawl.pipeline import OpenImagesPipeline
from openimages_crawler.crawl.spider import OpenImagesSpider
from openimages_crawler.reasons import FAILURE_STAT_PREFIX
from openimages_crawler.store import LocalStore
from tests.conftest import FAST_SETTINGS, Served, outcomes, project_settings, read_csv, serve


def crawler_for(store: Path, values: dict[str, Any] | None = None) -> Any:
    settings = project_settings({**FAST_SETTINGS, "IMAGES_STORE": str(store), "OPENIMAGES_PROGRESS": "off",
                                 **(values or {})})
    # The project's and the test's values; Scrapy's defaults come with get_crawler.
    return get_crawler(OpenImagesSpider, {name: value for name, value in settings.items()
                                          if settings.getpriority(name) >= SETTINGS_PRIORITIES["project"]})


def crawl(crawler: Any, **arguments: str) -> Any:
    return deferred_from_coro(crawler.crawl_async(**arguments))


def handler_of(crawler: Any) -> Any:
    """The handler that downloaded the crawl's http:// URLs."""
    return crawler.engine.downloader.handlers._handlers["http"]


def pipeline_of(crawler: Any) -> OpenImagesPipeline:
    (pipeline,) = [p for p in crawler.engine.scraper.itemproc.middlewares if isinstance(p, OpenImagesPipeline)]
    return pipeline


@pytest_twisted.inlineCallbacks
def test_every_fault_maps_to_its_failure_reason_in_process(
    mirror: Served, tmp_path: Path, handler: dict[str, str]
) -> Any:
    store = tmp_path / "store"
    crawler = crawler_for(store, {"OPENIMAGES_SAVE_ORIGINALS": True, **handler})
    yield crawl(crawler, metadata=str(mirror.metadata))
    assert type(handler_of(crawler)) is load_object(HANDLERS[handler["OPENIMAGES_DOWNLOAD_HANDLER"]])
    expected = mirror.mirror.expected()
    assert outcomes(store) == {image_id: [outcome] for image_id, outcome in expected.items()}
    stats = crawler.stats.get_stats()
    for reason in {outcome for outcome in expected.values() if outcome != "success"}:
        assert stats[FAILURE_STAT_PREFIX + reason] == list(expected.values()).count(reason), reason
    assert stats["openimages/success"] == list(expected.values()).count("success")
    # The pipeline used its store and its layout hooks: every success is in both outputs.
    pipeline = pipeline_of(crawler)
    assert isinstance(pipeline.store, LocalStore) and pipeline.store.root == store
    originals = {path.stem for path in (store / "train" / "images-original").rglob("*.*")}
    resized = {path.stem for path in (store / "train" / "images-resized").rglob("*.jpg")}
    successes = {image_id for image_id, outcome in expected.items() if outcome == "success"}
    assert originals == resized == successes
    assert not (store / ".tmp").exists()  # staging removed at close


@pytest_twisted.inlineCallbacks
def test_a_rerun_plans_no_download_and_rebuilds_from_stored_originals(clean_mirror: Served, tmp_path: Path) -> Any:
    store = tmp_path / "store"
    settings = {"OPENIMAGES_SAVE_ORIGINALS": True}
    yield crawl(crawler_for(store, settings), metadata=str(clean_mirror.metadata))
    served_before = sum(clean_mirror.server.counter.requests.values())
    resized = sorted((store / "train" / "images-resized").rglob("*.jpg"))
    resized[0].unlink()  # one missing output: rebuilt from the stored original
    rerun = crawler_for(store, settings)
    yield crawl(rerun, metadata=str(clean_mirror.metadata))
    assert sum(clean_mirror.server.counter.requests.values()) == served_before  # no download
    assert resized[0].stat().st_size > 0
    stats = rerun.stats.get_stats()
    assert stats["openimages/repaired/ok"] == 1
    assert stats["openimages/rows_skipped"] == len(clean_mirror.mirror.rows) - 1
    assert all(len(found) == 1 for found in outcomes(store).values())


@pytest_twisted.inlineCallbacks
def test_a_file_uri_store_resumes_like_a_folder(clean_mirror: Served, tmp_path: Path) -> Any:
    store = tmp_path / "store"
    for _ in range(2):
        yield crawl(crawler_for(store, {"IMAGES_STORE": store.as_uri()}), metadata=str(clean_mirror.metadata))
    assert outcomes(store) == {row.fields["ImageID"]: ["success"] for row in clean_mirror.mirror.rows}
    assert sum(clean_mirror.server.counter.requests.values()) == len(clean_mirror.mirror.rows)


@pytest_twisted.inlineCallbacks
def test_a_crawl_without_the_project_settings_is_a_clear_error(clean_mirror: Served, tmp_path: Path) -> Any:
    crawler = get_crawler(OpenImagesSpider, {"IMAGES_STORE": str(tmp_path / "store"), "TWISTED_REACTOR":
                                             "twisted.internet.asyncioreactor.AsyncioSelectorReactor"})
    with pytest.raises(UsageError, match="not set: run with the project's settings"):
        yield crawl(crawler, metadata=str(clean_mirror.metadata))


@pytest_twisted.inlineCallbacks
def test_the_downloader_holds_both_connection_limits(tmp_path: Path, handler: dict[str, str]) -> Any:
    served = serve(tmp_path, ("127.0.0.1", "127.0.0.2", "127.0.0.3"), faults=False, copies=3)
    try:
        for route in served.mirror.routes.values():
            route.delay = 0.25
        crawler = crawler_for(tmp_path / "store", {"CONCURRENT_REQUESTS": 100, "CONCURRENT_REQUESTS_PER_DOMAIN": 2,
                                                   **handler})
        yield crawl(crawler, metadata=str(served.metadata))
        assert isinstance(crawler.engine.downloader, ConnectionLimitDownloader)
        counter = served.server.counter
        assert max(counter.in_flight.peak.values()) == 2
        assert max(counter.connections.peak.values()) == 2
        assert crawler.engine.downloader.transferring == set()
    finally:
        served.server.close()


@pytest_twisted.inlineCallbacks
def test_a_body_over_download_maxsize_is_too_large(clean_mirror: Served, tmp_path: Path,
                                                   handler: dict[str, str]) -> Any:
    """Announced (Content-Length) or not (a cut connection streams on): the download stops there."""
    rows = clean_mirror.mirror.rows
    limit = min(int(row.fields["OriginalSize"]) for row in rows) - 1
    store = tmp_path / "store"
    yield crawl(crawler_for(store, {"DOWNLOAD_MAXSIZE": limit, **handler}), metadata=str(clean_mirror.metadata))
    assert outcomes(store) == {row.fields["ImageID"]: ["too_large"] for row in rows}
    _, failures = read_csv(store / "train" / "images-failure.csv")
    assert all(row["FailureDetails"].endswith("(DOWNLOAD_MAXSIZE)") for row in failures)


@pytest.mark.parametrize("name", ["curl", ""])
def test_an_unknown_download_handler_is_a_usage_error(name: str) -> None:
    settings = project_settings({"OPENIMAGES_DOWNLOAD_HANDLER": name})
    with pytest.raises(UsageError, match=f"OPENIMAGES_DOWNLOAD_HANDLER='{name}' is not a download handler "
                                         r"\(one of: aiohttp, twisted\)"):
        HandlerChoice().update_settings(settings)


def test_a_given_download_handlers_setting_wins() -> None:
    settings = project_settings({"DOWNLOAD_HANDLERS": {"https": "my.Handler"}})
    HandlerChoice().update_settings(settings)
    assert settings.getdict("DOWNLOAD_HANDLERS") == {"http": HANDLERS["aiohttp"], "https": "my.Handler"}


@pytest_twisted.inlineCallbacks
def test_an_unsupported_store_scheme_stops_before_any_download(clean_mirror: Served, tmp_path: Path) -> Any:
    with pytest.raises(UsageError, match=r"IMAGES_STORE='ftp://host/prefix': the ftp:// scheme is not supported"):
        crawler = crawler_for(tmp_path / "unused", {"IMAGES_STORE": "ftp://host/prefix"})
        yield crawl(crawler, metadata=str(clean_mirror.metadata))
    assert sum(clean_mirror.server.counter.requests.values()) == 0
    assert not Path("ftp:").exists() and not (tmp_path / "unused").exists()


def test_an_unknown_argument_is_an_error_with_a_suggestion(clean_mirror: Served, tmp_path: Path) -> None:
    crawler = crawler_for(tmp_path / "store")
    with pytest.raises(UsageError, match=r"unknown argument -a subest; did you mean -a subset\?"):
        OpenImagesSpider.from_crawler(crawler, metadata=str(clean_mirror.metadata), subest="validation")


# --- failure mapping: real Scrapy responses and exceptions -----------------------


def response(status: int, **meta: Any) -> Response:
    request = Request("http://127.0.0.1/x.jpg", meta=meta)
    headers = {"Location": "https://s.yimg.com/pw/images/en-us/photo_unavailable.png"} if status == 302 else {}
    return Response(request.url, status=status, headers=headers, request=request)


def test_statuses_map_to_reasons() -> None:
    assert errors.status_failure(response(200)) is None
    reason, details = errors.status_failure(response(302))
    assert reason == "unavailable" and "photo_unavailable.png" in details
    assert errors.status_failure(response(404)) == ("http_error", "HTTP 404")
    assert errors.status_failure(response(503, retry_times=3)) == ("http_error", "HTTP 503 after 3 retries")
    assert errors.status_failure(response(204))[0] == "http_error"


def test_download_errors_map_to_reasons() -> None:
    def reason(exc: Exception, retries: int = 0) -> tuple[str, str]:
        return errors.exception_failure(Failure(exc), retries)

    assert reason(DownloadTimeoutError("took too long"), 2) == ("timeout", "DownloadTimeoutError: took too long after 2 retries")
    assert reason(twisted_errors.TCPTimedOutError())[0] == "timeout"
    assert reason(ResponseDataLossError(), 1) == (
        "connection", "body cut short before Content-Length was reached after 1 retry")
    assert reason(twisted_errors.ConnectionRefusedError())[0] == "connection"
    assert reason(twisted_errors.DNSLookupError("no.such.host"))[0] == "connection"


def test_the_pipeline_hooks_keep_scrapys_signatures(tmp_path: Path) -> None:
    """file_path gives the original's key from the row's plan."""
    from openimages_crawler.checkpoint.planner import RowPlan
    from openimages_crawler.crawl.items import FetchedImage
    from openimages_crawler.dataset.rows import validate_row

    crawler = crawler_for(tmp_path / "store", {"OPENIMAGES_SAVE_ORIGINALS": True})
    pipeline = OpenImagesPipeline.from_crawler(crawler)
    md5 = base64.b64encode(hashlib.md5(b"x").digest()).decode()
    row = validate_row({"ImageID": "0123456789abcdef", "Subset": "train", "OriginalURL": "https://f.example/a.png",
                        "OriginalSize": "1", "OriginalMD5": md5}, None, None)
    plan = RowPlan(row, row.url, True, "train/images-original/012/0123456789abcdef.png", True, ("images-resized",))
    item = FetchedImage(plan)
    request = Request(row.url)
    assert pipeline.file_path(request, item=item) == "train/images-original/012/0123456789abcdef.png"


def test_only_public_addresses_pass() -> None:
    from openimages_crawler.crawl.hosts import is_public

    for private in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
                    "224.0.0.1", "240.0.0.1", "100.64.0.1", "::1", "fc00::1", "fe80::1", "ff02::1", "not an ip"):
        assert not is_public(private), private
    for public in ("8.8.8.8", "151.101.1.140", "2606:4700::1111"):
        assert is_public(public), public


def test_a_refused_lookup_is_a_final_blocked_host() -> None:
    from openimages_crawler.crawl.hosts import (
        BlockedHost,
        BlockedHostMiddleware,
        _refuse_private,
    )

    assert _refuse_private("93.184.216.34", "example.org") == "93.184.216.34"
    with pytest.raises(twisted_errors.DNSLookupError):
        _refuse_private("169.254.169.254", "metadata.internal")
    request = Request("http://metadata.internal/latest/x.jpg")
    with pytest.raises(BlockedHost, match="metadata.internal is 169.254.169.254"):
        BlockedHostMiddleware().process_exception(request, twisted_errors.DNSLookupError("refused"))
    with pytest.raises(BlockedHost):  # as Scrapy's HTTP handler reports a failed lookup
        BlockedHostMiddleware().process_exception(request, CannotResolveHostError("no results"))
    other = Request("http://no-such-host.invalid/x.jpg")
    assert BlockedHostMiddleware().process_exception(other, twisted_errors.DNSLookupError("nx")) is None
    reason, details = errors.exception_failure(Failure(BlockedHost("x is 10.0.0.1")), 0)
    assert (reason, details) == ("blocked_host", "x is 10.0.0.1")
