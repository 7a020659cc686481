"""A forward HTTP proxy for tests that answers every request itself.

A client sends a proxy the whole URL (``GET http://93.184.216.34/0/x.jpg``).
``ProxyServer`` serves those URLs from a mirror's routes and never connects
anywhere, so a test's rows can name public addresses while no traffic leaves
the machine. Its ``counter.requests`` counts requests by URL: a test can tell
which rows reached the proxy.
"""

from __future__ import annotations

from openimages_crawler.testing.mirror import Mirror, MirrorServer


class ProxyServer(MirrorServer):
    """The mirror's HTTP server on 127.0.0.1, keyed by absolute URLs (``url`` is the proxy's own)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1",))
        (server,) = self.servers
        self.url = server.base
        # A route is looked up as (base, request target): a proxy's target is the whole URL.
        server.base = ""

    def serve(self, mirror: Mirror) -> ProxyServer:
        by_url = {("", base + path): route for (base, path), route in mirror.routes.items()}
        super().serve(Mirror(mirror.rows, by_url))
        return self
