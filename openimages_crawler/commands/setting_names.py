"""Misspelled settings are errors: every ``OPENIMAGES_*`` name a command runs
with must be one that ``openimages_crawler/settings.py`` defines, or the
command stops before it writes anything, with one line naming the closest
defined name (as an unknown ``-a`` argument does).

Checked on the final settings of the command, so every way Scrapy 2.19 has of
putting a name there is covered: ``-s NAME=VALUE`` (priority "cmdline"), the
settings module (the project's from scrapy.cfg, or another chosen with the
``SCRAPY_SETTINGS_MODULE`` or ``SCRAPY_PROJECT`` environment variables), a
command's defaults, and, for a crawl, the spider's ``custom_settings``. Scrapy
2.19 makes no setting of other ``SCRAPY_``-prefixed environment variables: a
``SCRAPY_OPENIMAGES_…`` variable would be ignored silently, so it is refused
too. The defined names are read from the settings module when the check runs
(never a list kept here). Not a command: no ``Command`` class.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import UsageError

from openimages_crawler.exits import EXIT_USAGE, fail

if TYPE_CHECKING:
    from scrapy.crawler import CrawlerProcessBase
    from scrapy.settings import BaseSettings

SETTINGS_MODULE = "openimages_crawler.settings"  # the one place every setting is defined
PREFIX = "OPENIMAGES_"
# A name that starts like ours (in any case, its S or its _ left out) is meant as one of ours;
# a user's or Scrapy's own names (MYSETTING, DOWNLOAD_DELAY) are not looked at.
_LOOKS_OURS = re.compile(r"^OPENIMAGES?_?", re.IGNORECASE)
ENV_PREFIX = "SCRAPY_"  # Scrapy 2.19 reads only SCRAPY_SETTINGS_MODULE, _PROJECT, _CHECK, _PYTHON_SHELL


def defined_names(module: str = SETTINGS_MODULE) -> frozenset[str]:
    """The ``OPENIMAGES_*`` names the settings module defines, read now."""
    return frozenset(name for name in vars(importlib.import_module(module)) if name.startswith(PREFIX))


def closest_name(name: str, known: Iterable[str]) -> str | None:
    """The defined name ``name`` was probably meant as: compared without the
    common prefix (which would make every name look close), case ignored."""
    tails = {known_name.removeprefix(PREFIX): known_name for known_name in known}
    tail = _LOOKS_OURS.sub("", name, count=1).upper()
    if tail in tails:
        return tails[tail]
    found = difflib.get_close_matches(tail, list(tails), n=1)
    return tails[found[0]] if found else None


def unknown_names(given: Iterable[str], known: Iterable[str]) -> dict[str, str | None]:
    """Each name of ``given`` that looks like one of ours but is not defined ->
    its closest defined name (``None`` when none is close), sorted."""
    known = frozenset(known)
    return {name: closest_name(name, known) for name in sorted(set(given))
            if name not in known and _LOOKS_OURS.match(name)}


def _hint(close: str | None) -> str:
    return f"did you mean {close}?" if close else "no setting of settings.py is close (README, Settings)"


def _unknown_message(unknown: dict[str, str | None]) -> str:
    if len(unknown) == 1:
        ((name, close),) = unknown.items()
        return f"unknown setting {name}; {_hint(close)}"
    return "unknown settings " + ", ".join(f"{name} ({_hint(close)})" for name, close in unknown.items())


def _environment_message(variables: dict[str, str | None]) -> str:
    named = ", ".join(variables)
    wanted = " ".join(f"-s {close}=VALUE" for close in variables.values() if close) or "-s NAME=VALUE"
    return (f"environment variable{'s' if len(variables) > 1 else ''} {named} set{'s' if len(variables) == 1 else ''} "
            f"nothing (Scrapy reads no settings from SCRAPY_ variables): give {wanted}")


def setting_name_errors(settings: Iterable[str], more: Mapping[str, Any] | None = None,
                        environ: Mapping[str, str] | None = None, known: Iterable[str] | None = None) -> str:
    """The one-line error for the misspelled names among ``settings`` (a
    ``Settings``, or any names) and ``more`` (a spider's ``custom_settings``),
    and for ``SCRAPY_OPENIMAGES_…`` variables in ``environ`` (default: this
    process's environment); "" when there are none. ``known``: the defined
    names (default: read from the settings module now)."""
    known = defined_names() if known is None else frozenset(known)
    messages = []
    unknown = unknown_names([*settings, *(more or {})], known)
    if unknown:
        messages.append(_unknown_message(unknown))
    environ = os.environ if environ is None else environ
    variables = {variable: closest_name(variable.removeprefix(ENV_PREFIX), known)
                 for variable in sorted(environ)
                 if variable.startswith(ENV_PREFIX) and _LOOKS_OURS.match(variable.removeprefix(ENV_PREFIX))}
    if variables:
        messages.append(_environment_message(variables))
    return "; ".join(messages)


def check_setting_names(settings: BaseSettings, more: Mapping[str, Any] | None = None) -> None:
    """A ``UsageError`` (one line) when a name of ``settings`` or ``more`` looks
    like one of ours but settings.py does not define it."""
    message = setting_name_errors(settings, more)
    if message:
        raise UsageError(message, print_help=False)


def refuse_unknown_settings(settings: BaseSettings) -> int | None:
    """For a command that ends with its exit status: the error line written and
    2 (EXIT_USAGE), or ``None`` when every name is defined."""
    message = setting_name_errors(settings)
    return fail(message, EXIT_USAGE) if message else None


def spider_settings(crawler_process: CrawlerProcessBase, name: str) -> Mapping[str, Any]:
    """The ``custom_settings`` of the spider a crawl runs (applied only when its
    crawler is built, after the command's checks); {} for an unknown spider
    (Scrapy says so itself)."""
    try:
        spider_class = crawler_process.spider_loader.load(name)
    except KeyError:
        return {}
    return spider_class.custom_settings or {}
