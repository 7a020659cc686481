"""The private-address guard through a proxy: the middleware with a real
resolver, and a real `scrapy crawl` with ``http_proxy`` set against a test
proxy on 127.0.0.1 that answers every request itself (no traffic leaves the
machine)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from scrapy import Request
from scrapy.utils.defer import deferred_from_coro
from twisted.internet.error import DNSLookupError

from openimages_crawler.crawl.hosts import REFUSED, BlockedHostMiddleware, PublicAddressResolver
from openimages_crawler.testing.mirror import build_mirror
from openimages_crawler.testing.proxy import ProxyServer
from tests.conftest import ROOT, crawl_command, outcomes, read_csv

PUBLIC_HOST = "http://93.184.216.34"  # served by the test proxy, never contacted


@pytest_twisted.inlineCallbacks
def test_a_meta_proxy_is_trusted_and_the_host_behind_it_is_checked(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A proxy set in meta (not the environment's) is trusted once a request
    names it; the row's own host behind it is looked up and refused."""
    from twisted.internet import reactor

    # The crawl's resolver, as TWISTED_DNS_RESOLVER installs it (Scrapy's default cache size and timeout).
    resolver = PublicAddressResolver(reactor, 10000, 60.0)
    monkeypatch.setattr(reactor, "resolver", resolver)
    middleware = BlockedHostMiddleware()
    proxy = {"proxy": "127.0.0.3:3128"}  # no scheme, as Scrapy's handler accepts it
    with pytest.raises(DNSLookupError):
        yield deferred_from_coro(middleware.process_request(Request("http://10.9.8.7/x.jpg", meta=proxy)))
    assert REFUSED["10.9.8.7"] == "10.9.8.7"
    assert (yield resolver.getHostByName("127.0.0.3")) == "127.0.0.3"  # the proxy itself
    yield deferred_from_coro(middleware.process_request(Request("http://93.184.216.34/x.jpg", meta=proxy)))
    with pytest.raises(DNSLookupError):  # the proxy's address named by a row, no proxy on the way
        yield deferred_from_coro(middleware.process_request(Request("http://127.0.0.3:3128/x.jpg")))


@pytest.fixture
def proxy() -> Iterator[ProxyServer]:
    server = ProxyServer()
    yield server
    server.close()


@pytest.mark.e2e
def test_through_a_proxy_each_row_host_is_checked_and_the_proxy_is_allowed(
    proxy: ProxyServer, tmp_path: Path, handler: dict[str, str]
) -> None:
    """Rows on a public IP literal are stored through the loopback proxy; rows on
    10.1.2.3, on `localhost` (proxied) and on the proxy's own address (which
    no_proxy sends direct) are blocked_host, and neither they nor the proxy
    see a request for them."""
    proxy_port = urlsplit(proxy.url).port
    private_hosts = ["http://10.1.2.3", f"http://localhost:{proxy_port}", proxy.url]
    mirror = build_mirror([PUBLIC_HOST, *private_hosts], faults=False)
    proxy.serve(mirror)
    metadata = mirror.write_metadata(tmp_path / "images.csv")
    store = tmp_path / "store"
    environment = {name: value for name, value in os.environ.items() if not name.lower().endswith("_proxy")}
    environment |= {"http_proxy": proxy.url, "no_proxy": "127.0.0.1"}
    crawl = subprocess.run(crawl_command(metadata, store, {"OPENIMAGES_BLOCK_PRIVATE_HOSTS": "True", **handler}),
                           cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert crawl.returncode == 0, crawl.stderr[-4000:]

    url_of = {row.fields["ImageID"]: row.fields["OriginalURL"] for row in mirror.rows}
    public = {image_id for image_id, url in url_of.items() if url.startswith(f"{PUBLIC_HOST}/")}
    assert public and len(public) < len(url_of)
    assert outcomes(store) == {image_id: ["success" if image_id in public else "blocked_host"]
                               for image_id in url_of}
    _, failures = read_csv(store / "train" / "images-failure.csv")
    addresses = {"10.1.2.3": "10.1.2.3", "localhost": "127.0.0.1", "127.0.0.1": "127.0.0.1"}
    for failure in failures:
        host = urlsplit(url_of[failure["ImageID"]]).hostname
        assert failure["FailureDetails"].startswith(f"{host} is {addresses[host]}, not a public address")
    assert set(proxy.counter.requests) == {url_of[image_id] for image_id in public}
