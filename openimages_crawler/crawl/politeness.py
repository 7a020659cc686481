"""Crawling politely: a user agent that says who crawls and how to reach them,
and the publishers' opt-out headers respected.

``X-Robots-Tag`` may be sent several times, each a comma-separated list of
directives, for every agent or, prefixed ``agent: ``, for one: an image whose
header carries one of ``OPENIMAGES_DISALLOWED_DIRECTIVES`` (``noai``,
``noimageai``, ``noindex``, ``noimageindex`` by default) for all agents or
for this crawl's token is not stored (``opted_out``), as img2dataset does.
"""

from __future__ import annotations

from collections.abc import Iterable

from scrapy.exceptions import UsageError
from scrapy.settings import SETTINGS_PRIORITIES, BaseSettings

from openimages_crawler import __version__

# X-Robots-Tag directives that take a value after a colon (not an agent's name).
_VALUED = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
# How the crawl names itself in its user agent, and the token X-Robots-Tag names it by.
AGENT_TOKEN = "openimages-crawler"


def user_agent(contact: str) -> str:
    """``openimages-crawler/{version} (+{contact})``: who crawls, and how to reach them
    (the project has no page of its own to name: the contact is the crawl's runner)."""
    contact = " ".join(contact.split())  # one line, whatever the setting holds
    if any(character in contact for character in "()") or not contact.isprintable() or not contact.isascii():
        raise UsageError(f"OPENIMAGES_CONTACT={contact!r}: give a URL or an e-mail address (no parentheses)")
    return f"{AGENT_TOKEN}/{__version__}" + (f" (+{contact})" if contact else "")


def crawl_user_agent(settings: BaseSettings) -> str:
    """The agent every request of the crawl sends (the metadata's too): USER_AGENT
    where it was given (``-s``, a settings module), else ours with OPENIMAGES_CONTACT."""
    if (settings.getpriority("USER_AGENT") or 0) > SETTINGS_PRIORITIES["addon"]:
        return str(settings["USER_AGENT"])
    return user_agent(str(settings["OPENIMAGES_CONTACT"] or ""))


class PoliteAgent:
    """A Scrapy add-on: USER_AGENT for the image requests (``crawl_user_agent``)."""

    def update_settings(self, settings: BaseSettings) -> None:
        settings.set("USER_AGENT", crawl_user_agent(settings), "addon")


def parse_directives(value: object) -> frozenset[str]:
    """``OPENIMAGES_DISALLOWED_DIRECTIVES``: a comma-separated list (or a list); empty turns the check off."""
    names = value.split(",") if isinstance(value, str) else list(value or ())
    return frozenset(str(name).strip().lower() for name in names if str(name).strip())


def opt_out(values: Iterable[str], disallowed: frozenset[str], token: str = AGENT_TOKEN) -> str | None:
    """The ``X-Robots-Tag`` value that opts the image out of this crawl, or ``None``.

    A value is a comma-separated list of directives, for every agent, or for
    one when it starts ``agent:`` (a first item holding a colon whose head is
    not a directive that takes a value, such as ``max-image-preview:large``);
    a directive's own ``:value`` is not part of its name, and ``none`` means
    ``noindex, nofollow`` (Google's definition)."""
    if not disallowed:
        return None
    for value in values:
        items = value.split(",")
        head, colon, rest = items[0].partition(":")
        if colon and head.strip().lower() not in _VALUED and " " not in head.strip():
            if head.strip().lower() != token:
                continue  # for another agent
            items[0] = rest
        names = {item.partition(":")[0].strip().lower() for item in items}
        if "none" in names:
            names |= {"noindex", "nofollow"}
        if names & disallowed:
            return value.strip()
    return None
