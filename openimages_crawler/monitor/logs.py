"""What a run logs at the default level: this project's lines, not Scrapy's
start-up banner, settings, component lists and stats dump (all still there at
``--loglevel DEBUG``; the stats dump also with ``-s STATS_DUMP=True``), and a
cut-off body said as the failure row says it, not as advice to weaken the check."""

from __future__ import annotations

import logging

from scrapy.settings import SETTINGS_PRIORITIES, BaseSettings

# Loggers whose INFO lines describe the framework, not the run.
FRAMEWORK_LOGGERS = (
    "scrapy.utils.log",  # the banner, versions, reactor
    "scrapy.crawler",  # overridden settings
    "scrapy.middleware",  # enabled extensions, middlewares, pipelines
    "scrapy.addons",
    "scrapy.extensions.telnet",
    "scrapy.core.engine",  # spider opened / closing / closed
    "scrapy.extensions.logstats",
    "scrapy.extensions.remote_control",
    "scrapy.extensions.feedexport",  # "Stored results_csv feed" of each part
    "botocore.configprovider",  # "Found endpoint for s3 via …" for every client of an object store
    "botocore.credentials",  # "Found credentials in environment variables"
)
STATS_LOGGER = "scrapy.statscollectors"
# Where Scrapy's download handlers say "Got data loss".
DATA_LOSS_LOGGERS = ("scrapy.core.downloader.handlers.http11", "scrapy.core.downloader.handlers._base_streaming")


class DataLossInOurWords(logging.Filter):
    """Scrapy's "Got data loss in …; set DOWNLOAD_FAIL_ON_DATALOSS = False" is a
    `connection` failure row here: said as such, at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Got data loss" in message:
            url = message.split("Got data loss in ", 1)[-1].split(". If you want", 1)[0]
            record.msg, record.args = "%s: the body was cut short (recorded as a connection failure)", (url,)
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"  # handlers above DEBUG drop it
        return True


class FrameworkChatter(logging.Filter):
    """Only warnings and errors of a framework logger. A filter, not a level:
    Scrapy's logging set-up resets its loggers' levels, not their filters."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def quiet_framework(settings: BaseSettings) -> None:
    """Set the framework's loggers for this run (call before the crawler process starts)."""
    debug = logging.getLevelName(str(settings.get("LOG_LEVEL", "DEBUG")).upper()) <= logging.DEBUG
    asked = (settings.getpriority("STATS_DUMP") or 0) >= SETTINGS_PRIORITIES["cmdline"]
    for name in (*FRAMEWORK_LOGGERS, STATS_LOGGER):
        quiet = not debug and not (name == STATS_LOGGER and asked)
        _set_filter(logging.getLogger(name), FrameworkChatter, quiet)
    for name in DATA_LOSS_LOGGERS:
        _set_filter(logging.getLogger(name), DataLossInOurWords, True)


def _set_filter(logger: logging.Logger, kind: type[logging.Filter], on: bool) -> None:
    present = [found for found in logger.filters if isinstance(found, kind)]
    if on and not present:
        logger.addFilter(kind())
    for found in present if not on else ():
        logger.removeFilter(found)
