"""Image URLs come from untrusted metadata: refuse hosts that a public image
host never is (OPENIMAGES_BLOCK_PRIVATE_HOSTS).

The check is made on the address the connection will use, in the crawl's DNS
resolver (Twisted resolves IP literals through it too; the aiohttp handler
puts its own lookups and IP literals through ``PublicAddressResolver.check``,
crawl/handlers.py), so a name that resolves to 127.0.0.1, 10.x or
169.254.169.254, even only on a second lookup (DNS rebinding), is refused
before any connection. The resolver's refusal
reaches Scrapy as a failed lookup (``CannotResolveHostError``); ``BlockedHostMiddleware`` turns it into
``BlockedHost`` (FailureReason ``blocked_host``) before the retry middleware
would retry it.

Through a proxy (``http_proxy`` and the like, or ``meta["proxy"]``) the
connection, and so the resolver, only sees the proxy's name. The proxy is
trusted like the store's endpoint, and ``BlockedHostMiddleware`` runs after
Scrapy's HttpProxyMiddleware (750) to look the request's own host up through
the same resolver, refusing it before the proxy is contacted. The proxy makes
its own lookup, which may differ (split-horizon DNS, rebinding between the
two): that is beyond what this process can check.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import getproxies

from scrapy.exceptions import CannotResolveHostError
from scrapy.resolver import CachingThreadedResolver
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.url import add_http_if_no_scheme
from twisted.internet.error import DNSLookupError

from openimages_crawler.crawl.config import open_crawl_store

if TYPE_CHECKING:
    from collections.abc import Sequence

    from scrapy import Request
    from twisted.internet.defer import Deferred

# Host name -> the refused address it resolved to (the resolver is the process's).
REFUSED: dict[str, str] = {}


class BlockedHost(Exception):
    """An image URL whose host is, or resolves to, a non-public address."""


def is_public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


class PublicAddressResolver(CachingThreadedResolver):
    """Scrapy's caching resolver that fails any lookup whose answer is not a
    public address (set with TWISTED_DNS_RESOLVER)."""

    trusted: frozenset[str] = frozenset()
    # Proxy hosts (exact names): trusted when connected to as the proxy; a request naming one is
    # checked by BlockedHostMiddleware with public_address, which does not trust them.
    proxies: frozenset[str] = frozenset()

    @classmethod
    def from_crawler(cls, crawler: Any, reactor: Any) -> Any:
        if not crawler.settings.getbool("OPENIMAGES_BLOCK_PRIVATE_HOSTS"):
            return CachingThreadedResolver.from_crawler(crawler, reactor)
        resolver = super().from_crawler(crawler, reactor)
        resolver.trusted = open_crawl_store(crawler.settings).trusted_hosts()  # originals are read back from it
        resolver.proxies = environment_proxy_hosts()
        return resolver

    def getHostByName(self, name: str, timeout: Sequence[int] = ()) -> Deferred[str]:  # noqa: N802
        if name in self.proxies:
            return super().getHostByName(name, timeout)
        return self.public_address(name, timeout)

    def check(self, name: str, address: str) -> str:
        """What ``getHostByName`` does with an answer, for a lookup another
        download handler made: ``address``, or DNSLookupError (noted in REFUSED)."""
        if name in self.proxies or is_trusted(name, self.trusted):
            return address
        return _refuse_private(address, name)

    def public_address(self, name: str, timeout: Sequence[int] = ()) -> Deferred[str]:
        """The address of ``name``; a failed lookup (noted in REFUSED) unless it
        is public or ``name`` is a store host. Proxies get no exemption here."""
        found = super().getHostByName(name, timeout)
        return found if is_trusted(name, self.trusted) else found.addCallback(_refuse_private, name)


def installed_guard() -> PublicAddressResolver | None:
    """The crawl's guard: the reactor's resolver when it is ours (it is not
    with OPENIMAGES_BLOCK_PRIVATE_HOSTS=False or another TWISTED_DNS_RESOLVER)."""
    from twisted.internet import reactor

    resolver = getattr(reactor, "resolver", None)
    return resolver if isinstance(resolver, PublicAddressResolver) else None


def proxy_host(url: str) -> str | None:
    """The host of a proxy URL, read as Scrapy's HTTP handler reads ``meta["proxy"]``."""
    return urlsplit(add_http_if_no_scheme(url)).hostname


def environment_proxy_hosts() -> frozenset[str]:
    """Hosts of the environment's proxies, the ones HttpProxyMiddleware uses
    (``getproxies``; its ``no`` entry is no_proxy's list, not a proxy)."""
    hosts = {proxy_host(url) for scheme, url in getproxies().items() if scheme != "no"}
    return frozenset(host for host in hosts if host)


def is_trusted(name: str, hosts: frozenset[str]) -> bool:
    """``name`` is a trusted host or a name under one (a bucket's virtual host)."""
    return any(name == host or name.endswith(f".{host}") for host in hosts)


def _refuse_private(address: str, name: str) -> str:
    if not is_public(address):
        REFUSED[name] = address
        raise DNSLookupError(f"{name} resolves to {address}, not a public address")
    return address


class BlockedHostMiddleware:
    """A lookup the resolver refused becomes ``BlockedHost``: final, not retried.

    Placed after HttpProxyMiddleware, so ``meta["proxy"]`` is the proxy the
    request will really go through."""

    async def process_request(self, request: Request) -> None:
        """Look up the request's own host when the resolver would not see it
        (through a proxy) or would trust it (it names a proxy, say one that
        no_proxy bypasses); a refusal reaches ``process_exception``."""
        resolver = installed_guard()
        if resolver is None:
            return
        proxy_url = request.meta.get("proxy")
        proxy = proxy_host(proxy_url) if proxy_url else None
        if proxy and proxy not in resolver.proxies:
            resolver.proxies |= {proxy}  # a meta["proxy"] is trusted like the environment's
        host = urlparse_cached(request).hostname or ""
        if proxy or host in resolver.proxies:
            await maybe_deferred_to_future(resolver.public_address(host))

    def process_exception(self, request: Request, exception: Exception) -> None:
        if isinstance(exception, DNSLookupError | CannotResolveHostError):
            host = urlparse_cached(request).hostname or ""
            address = REFUSED.get(host)
            if address is not None:
                raise BlockedHost(f"{host} is {address}, not a public address (OPENIMAGES_BLOCK_PRIVATE_HOSTS)")
