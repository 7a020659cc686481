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

# How the crawl names itself in its user agent, and the token X-Robots-Tag names it by.
AGENT_TOKEN = "openimages-crawler"
PROJECT_URL = "https://github.com/openimages-crawler/openimages-crawler"


def user_agent(contact: str) -> str:
    """``openimages-crawler/{version} (+{project}; {contact})``: who crawls, and how to reach them."""
    contact = " ".join(contact.split())  # one line, whatever the setting holds
    if any(character in contact for character in "()\r\n"):
        raise UsageError(f"OPENIMAGES_CONTACT={contact!r}: give a URL or an e-mail address (no parentheses)")
    return f"{AGENT_TOKEN}/{__version__} (+{PROJECT_URL}" + (f"; {contact})" if contact else ")")


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
    """The ``X-Robots-Tag`` value that opts the image out of this crawl, or ``None``."""
    if not disallowed:
        return None
    for value in values:
        agent, colon, directives = value.partition(":")
        if not colon:
            directives = value  # for every agent
        elif agent.strip().lower() != token:
            continue  # for another agent (or a directive with a value, such as unavailable_after)
        if any(directive.strip().lower() in disallowed for directive in directives.split(",")):
            return value.strip()
    return None
