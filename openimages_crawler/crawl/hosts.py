"""Image URLs come from untrusted metadata: refuse hosts that a public image
host never is (OPENIMAGES_BLOCK_PRIVATE_HOSTS).

The check is made on the address the connection will use, in the crawl's DNS
resolver (Twisted resolves IP literals through it too), so a name that
resolves to 127.0.0.1, 10.x or 169.254.169.254, even only on a second lookup
(DNS rebinding), is refused before any connection. The resolver's refusal
reaches Scrapy as a failed lookup (``CannotResolveHostError``); ``BlockedHostMiddleware`` turns it into
``BlockedHost`` (FailureReason ``blocked_host``) before the retry middleware
would retry it.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scrapy.exceptions import CannotResolveHostError
from scrapy.resolver import CachingThreadedResolver
from scrapy.utils.httpobj import urlparse_cached
from twisted.internet.error import DNSLookupError

from openimages_crawler.crawl.config import open_crawl_store
from openimages_crawler.store.base import Store
from openimages_crawler.store.objects import ObjectStore

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

    @classmethod
    def from_crawler(cls, crawler: Any, reactor: Any) -> Any:
        if not crawler.settings.getbool("OPENIMAGES_BLOCK_PRIVATE_HOSTS"):
            return CachingThreadedResolver.from_crawler(crawler, reactor)
        resolver = super().from_crawler(crawler, reactor)
        resolver.trusted = store_hosts(open_crawl_store(crawler.settings))
        return resolver

    def getHostByName(self, name: str, timeout: Sequence[int] = ()) -> Deferred[str]:  # noqa: N802
        found = super().getHostByName(name, timeout)
        return found if is_trusted(name, self.trusted) else found.addCallback(_refuse_private, name)


def store_hosts(store: Store) -> frozenset[str]:
    """The host of an object store's endpoint (a private MinIO, say): the crawl
    reads stored originals back from it, so it is not refused like a row's host."""
    if not isinstance(store, ObjectStore):
        return frozenset()
    host = urlsplit(store.client.meta.endpoint_url).hostname
    return frozenset({host}) if host else frozenset()


def is_trusted(name: str, hosts: frozenset[str]) -> bool:
    """``name`` is a trusted host or a name under one (a bucket's virtual host)."""
    return any(name == host or name.endswith(f".{host}") for host in hosts)


def _refuse_private(address: str, name: str) -> str:
    if not is_public(address):
        REFUSED[name] = address
        raise DNSLookupError(f"{name} resolves to {address}, not a public address")
    return address


class BlockedHostMiddleware:
    """A lookup the resolver refused becomes ``BlockedHost``: final, not retried."""

    def process_exception(self, request: Request, exception: Exception) -> None:
        if isinstance(exception, DNSLookupError | CannotResolveHostError):
            host = urlparse_cached(request).hostname or ""
            address = REFUSED.get(host)
            if address is not None:
                raise BlockedHost(f"{host} is {address}, not a public address (OPENIMAGES_BLOCK_PRIVATE_HOSTS)")
