"""Secrets never reach a log, a report, a record or a printed command.

A setting is secret when its name holds SECRET, TOKEN, PASSWORD or KEY (an
access key's id, ``…_KEY_ID``, is not). Its value is shown as ``***`` wherever
the project repeats settings or the command line; and every log record of the
process, Scrapy's and botocore's included, has the values of the secrets it
was given, the password of any URL and the signature, credential and token of
any presigned URL replaced by ``***`` before a handler sees it. No Scrapy import.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "KEY")
SETTING_OPTIONS = ("-s", "--set")  # Scrapy's options taking NAME=VALUE
ARGUMENT_OPTIONS = ("-a",)  # spider arguments, NAME=VALUE too
OPTIONS = (*SETTING_OPTIONS, *ARGUMENT_OPTIONS)
_SHORTEST_SECRET = 4  # shorter values ("1", "on") would mask ordinary words in logs

# The query parameters that make a presigned URL a credential (AWS SigV2 and SigV4, GCS).
_SIGNED_QUERY = re.compile(
    r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|"
    r"x-goog-signature|x-goog-credential)=)[^&#\s\"'<>]+")
# ``scheme://user:password@host``: the password.
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@?#]*:)[^/\s@?#]+@")

_known: set[str] = set()  # secret values given to this process, longest first when masked
_known_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None


def is_secret(name: str) -> bool:
    """A setting (or argument) whose value must never be shown."""
    upper = name.upper()
    return not upper.endswith("_KEY_ID") and any(word in upper for word in SECRET_WORDS)


def remember(values: Iterable[tuple[str, Any]]) -> None:
    """Mask, from now on, the values of the secret names among ``values``
    (settings, environment variables) wherever a log line repeats them."""
    global _pattern  # noqa: PLW0603 (one table per process, read by every log record)
    found = {str(value) for name, value in values
             if is_secret(str(name)) and isinstance(value, str) and len(value) >= _SHORTEST_SECRET}
    with _known_lock:
        if found <= _known:
            return
        _known.update(found)
        ordered = sorted(_known, key=len, reverse=True)
        _pattern = re.compile("|".join(map(re.escape, ordered)))


def redact(text: str) -> str:
    """``text`` with every known secret, URL password and URL signature masked."""
    if "=" in text or "@" in text:
        text = _SIGNED_QUERY.sub(rf"\1{MASK}", text)
        text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    pattern = _pattern
    return pattern.sub(MASK, text) if pattern is not None else text


def redacted_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as they may be shown: secret values masked, the rest redacted as text."""
    return {name: (MASK if is_secret(name) and value not in (None, "") else
                   redact(value) if isinstance(value, str) else value)
            for name, value in settings.items()}


def redacted_argv(argv: Iterable[str]) -> list[str]:
    """A command line as it may be printed: ``-s NAME=VALUE`` (``--set``,
    ``--set=``, ``-sNAME=``) and ``-a NAME=VALUE`` of a secret name masked."""
    shown: list[str] = []
    pending = False  # the previous word was an option whose NAME=VALUE follows
    for word in argv:
        prefix, assignment = ("", word) if pending else _option_split(word)
        if (pending or prefix) and "=" in assignment:
            name, value = assignment.split("=", 1)
            if is_secret(name) and value:
                assignment = f"{name}={MASK}"
        shown.append(prefix + redact(assignment))
        pending = word in OPTIONS
    return shown


def _option_split(word: str) -> tuple[str, str]:
    """``--set=NAME=VALUE`` or ``-sNAME=VALUE`` as (the option, ``NAME=VALUE``); else ("", word)."""
    for option in OPTIONS:
        if option.startswith("--") and word.startswith(f"{option}="):
            return f"{option}=", word[len(option) + 1:]
        if not option.startswith("--") and word.startswith(option) and word != option:
            return option, word[len(option):]
    return "", word


class _Redacting:
    """The log record factory, wrapped: each record's message (and its
    traceback) is redacted when made, before any filter or handler reads it."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a malformed record is the handler's to report)
            return record
        shown = redact(message)
        if shown != message:
            record.msg, record.args = shown, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text)
        return record


def install() -> None:
    """Redact every log record of this process (once), and remember the
    secrets its environment and command line hold."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _Redacting):
        logging.setLogRecordFactory(_Redacting(factory))
    remember(os.environ.items())
    remember(_assignments(sys.argv))


def _assignments(argv: list[str]) -> list[tuple[str, str]]:
    """The NAME=VALUE words of a command line (``--set=`` and ``-sNAME=`` too)."""
    found: list[tuple[str, str]] = []
    for word in argv:
        name, equals, value = _option_split(word)[1].partition("=")
        if equals:
            found.append((name, value))
    return found
