"""The crawl's own settings, read and checked once for the spider and the pipeline."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from scrapy.exceptions import UsageError
from scrapy.settings import BaseSettings
from scrapy.utils.misc import load_object

from openimages_crawler.checkpoint.results import FailureRow, SuccessRow
from openimages_crawler.crawl.politeness import parse_directives
from openimages_crawler.dataset.selection import Shard
from openimages_crawler.imaging.pillow import ResizeSpec, parse_color
from openimages_crawler.imaging.process import SizeFilter
from openimages_crawler.outputs.containers import PackSink, scratch_folder
from openimages_crawler.outputs.formats import (
    CONTAINERS,
    FILES,
    UnknownFormat,
    container,
)
from openimages_crawler.outputs.sinks import FilesSink, OutputSink
from openimages_crawler.redact import remember
from openimages_crawler.store import STORE_SCHEMES, UnsupportedStore, open_store
from openimages_crawler.store.base import Store, StoreOptions
from openimages_crawler.store.layout import (
    MASKS_DIR,
    METADATA_DIR,
    StoreLayout,
    part_label,
)
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.objects import StoreUnavailable

# Keys of one OPENIMAGES_OUTPUTS entry: required, then optional (defaults from
# the single-output settings).
_OUTPUT_KEYS = ("dir", "mode", "size")
_OPTIONAL_OUTPUT_KEYS = ("format", "quality", "resample", "container", "pad_color")


# What CrawlConfig reads; a crawl without the project's settings module would
# otherwise take None for each of them.
_READ_SETTINGS = (
    "IMAGES_STORE", "OPENIMAGES_SAVE_ORIGINALS", "OPENIMAGES_ORIGINALS_DIR", "OPENIMAGES_SUBDIR_CHARS",
    "OPENIMAGES_CVDF_URL", "OPENIMAGES_CHECK_MD5_IF_EXISTS", "OPENIMAGES_MAX_PIXELS", "OPENIMAGES_MAX_DECODE_BYTES",
    "OPENIMAGES_MIN_FREE_BYTES", "OPENIMAGES_MAX_ROW_BYTES", "OPENIMAGES_WORKERS", "OPENIMAGES_STATUS_HOSTS",
    "OPENIMAGES_FAST_RESIZE", "OPENIMAGES_METADATA_URL", "OPENIMAGES_METADATA_VERIFY", "OPENIMAGES_SAVE_TARBALLS",
    "OPENIMAGES_DOWNLOAD_300K", "OPENIMAGES_RESIZE", "OPENIMAGES_RESIZED_DIR", "OPENIMAGES_RESIZE_MODE",
    "OPENIMAGES_RESIZE_SIZE", "OPENIMAGES_RESAMPLE", "OPENIMAGES_RESIZE_FORMAT", "OPENIMAGES_RESIZE_QUALITY",
    "OPENIMAGES_RESIZE_CONTAINER", "OPENIMAGES_ORIGINALS_CONTAINER", "OPENIMAGES_SHARD_SIZE",
    "OPENIMAGES_OUTPUTS", "OPENIMAGES_PAD_COLOR", "OPENIMAGES_DISALLOWED_DIRECTIVES", "OPENIMAGES_HASHES",
    "OPENIMAGES_MIN_IMAGE_SIDE", "OPENIMAGES_MAX_IMAGE_AREA", "OPENIMAGES_MAX_ASPECT_RATIO",
)


@dataclass(frozen=True, slots=True)
class ResizedOutput:
    """One resized copy of every image, under ``{Subset}/{dir}/``: files, or
    packs of a container (``outputs.containers``)."""

    dir: str
    spec: ResizeSpec
    container: str = FILES


@dataclass(frozen=True, slots=True)
class CrawlConfig:
    """What to store and how to verify it, from the ``OPENIMAGES_*`` settings
    (their defaults are in settings.py, the one place that has them)."""

    store_uri: str  # IMAGES_STORE
    layout: StoreLayout
    save_originals: bool
    outputs: tuple[ResizedOutput, ...]
    check_md5_if_exists: bool
    max_pixels: int
    max_decode_bytes: int
    min_free_bytes: int
    max_row_bytes: int
    workers: int
    fast_resize: bool
    metadata_url: str
    metadata_verify: bool
    keep_archives: bool
    thumbnails_300k: bool
    cvdf_url: str
    originals_container: str = FILES
    keep: SizeFilter = SizeFilter()  # OPENIMAGES_MIN_IMAGE_SIDE, _MAX_IMAGE_AREA, _MAX_ASPECT_RATIO
    hashes: tuple[str, ...] = ()  # OPENIMAGES_HASHES
    disallowed: frozenset[str] = frozenset()  # OPENIMAGES_DISALLOWED_DIRECTIVES
    pack_size: int = 10000  # images per pack (OPENIMAGES_SHARD_SIZE)
    status_hosts: int = 100  # hosts a process's record names (OPENIMAGES_STATUS_HOSTS)

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> CrawlConfig:
        missing = [name for name in _READ_SETTINGS if settings.get(name) is None]
        if missing:
            raise UsageError(
                f"{', '.join(missing)} not set: run with the project's settings "
                "(openimages_crawler.settings holds every default)"
            )
        store_uri = str(settings["IMAGES_STORE"] or "")
        if not store_uri:
            raise UsageError("IMAGES_STORE must name the dataset's folder")
        save_originals = settings.getbool("OPENIMAGES_SAVE_ORIGINALS")
        originals_dir = _folder_name(settings["OPENIMAGES_ORIGINALS_DIR"], "OPENIMAGES_ORIGINALS_DIR")
        outputs = _outputs(settings)
        if not outputs and not save_originals:
            raise UsageError(
                "nothing to store: set OPENIMAGES_RESIZE=True, OPENIMAGES_OUTPUTS or "
                "OPENIMAGES_SAVE_ORIGINALS=True"
            )
        if originals_dir in {output.dir for output in outputs}:
            raise UsageError(f"an output folder is also OPENIMAGES_ORIGINALS_DIR ({originals_dir!r})")
        subdir_chars = settings.getint("OPENIMAGES_SUBDIR_CHARS")
        if subdir_chars < 0:
            raise UsageError("OPENIMAGES_SUBDIR_CHARS must be 0 or more")
        originals_container = _container(settings["OPENIMAGES_ORIGINALS_CONTAINER"], "OPENIMAGES_ORIGINALS_CONTAINER")
        pack_size = settings.getint("OPENIMAGES_SHARD_SIZE")
        if pack_size < 1:
            raise UsageError(f"OPENIMAGES_SHARD_SIZE must be 1 or more, not {pack_size}")
        status_hosts = _count(settings["OPENIMAGES_STATUS_HOSTS"])
        if status_hosts is None:
            raise UsageError(f"OPENIMAGES_STATUS_HOSTS={settings['OPENIMAGES_STATUS_HOSTS']!r} is not a number of "
                             "hosts (0 or more)")
        cvdf_url = str(settings["OPENIMAGES_CVDF_URL"])
        if urlsplit(cvdf_url).scheme not in ("http", "https"):
            raise UsageError(f"OPENIMAGES_CVDF_URL must be http(s), not {cvdf_url!r}")
        return cls(
            store_uri=store_uri,
            layout=StoreLayout(originals_dir=originals_dir, subdir_chars=subdir_chars),
            save_originals=save_originals,
            outputs=outputs,
            check_md5_if_exists=settings.getbool("OPENIMAGES_CHECK_MD5_IF_EXISTS"),
            max_pixels=settings.getint("OPENIMAGES_MAX_PIXELS"),
            max_decode_bytes=settings.getint("OPENIMAGES_MAX_DECODE_BYTES"),
            keep=_size_filter(settings),
            hashes=_hashes(settings["OPENIMAGES_HASHES"]),
            disallowed=parse_directives(settings["OPENIMAGES_DISALLOWED_DIRECTIVES"]),
            min_free_bytes=settings.getint("OPENIMAGES_MIN_FREE_BYTES"),
            max_row_bytes=settings.getint("OPENIMAGES_MAX_ROW_BYTES"),
            workers=settings.getint("OPENIMAGES_WORKERS") or os.cpu_count() or 1,
            fast_resize=settings.getbool("OPENIMAGES_FAST_RESIZE"),
            metadata_url=str(settings["OPENIMAGES_METADATA_URL"]),
            metadata_verify=settings.getbool("OPENIMAGES_METADATA_VERIFY"),
            keep_archives=settings.getbool("OPENIMAGES_SAVE_TARBALLS"),
            thumbnails_300k=settings.getbool("OPENIMAGES_DOWNLOAD_300K"),
            cvdf_url=cvdf_url,
            originals_container=originals_container,
            pack_size=pack_size,
            status_hosts=status_hosts,
        )

    def described_outputs(self) -> list[str]:
        """What the crawl stores, in words: ``images-resized (ShrinkToFit 224 jpg)``, ``images-original``."""
        described = [f"{output.dir} ({output.spec.mode} {output.spec.size} {output.spec.format}"
                     f"{'' if output.container == FILES else ', ' + output.container})" for output in self.outputs]
        if self.save_originals:
            kind = self.originals_container
            described.append(self.layout.originals_dir + ("" if kind == FILES else f" ({kind})"))
        return described


def _outputs(settings: BaseSettings) -> tuple[ResizedOutput, ...]:
    """OPENIMAGES_OUTPUTS (a list, or its JSON), else the single-output settings."""
    defaults = {
        "mode": settings["OPENIMAGES_RESIZE_MODE"],
        "size": settings["OPENIMAGES_RESIZE_SIZE"],
        "resample": settings["OPENIMAGES_RESAMPLE"],
        "format": settings["OPENIMAGES_RESIZE_FORMAT"],
        "quality": settings["OPENIMAGES_RESIZE_QUALITY"],
        "container": settings["OPENIMAGES_RESIZE_CONTAINER"],
        "pad_color": settings["OPENIMAGES_PAD_COLOR"],
    }
    entries = settings["OPENIMAGES_OUTPUTS"] or []
    if isinstance(entries, str):
        try:
            entries = json.loads(entries)
        except ValueError as exc:
            raise UsageError(f"OPENIMAGES_OUTPUTS is not valid JSON: {exc}") from None
    if not isinstance(entries, list | tuple) or not all(isinstance(e, dict) for e in entries):
        raise UsageError("OPENIMAGES_OUTPUTS must be a list of dicts (dir, mode, size[, format, quality, resample])")
    if not entries:
        if not settings.getbool("OPENIMAGES_RESIZE"):
            return ()
        entries = [{"dir": settings["OPENIMAGES_RESIZED_DIR"]}]
        label = "resize setting"
    else:
        label = "OPENIMAGES_OUTPUTS entry"
        for entry in entries:
            missing = [key for key in _OUTPUT_KEYS if key not in entry]
            unknown = sorted(set(entry) - set(_OUTPUT_KEYS) - set(_OPTIONAL_OUTPUT_KEYS))
            if missing or unknown:
                raise UsageError(
                    f"OPENIMAGES_OUTPUTS entry {entry}: "
                    + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                               unknown and f"unknown {', '.join(unknown)}"]))
                )
    outputs = []
    for entry in entries:
        values = defaults | entry
        try:
            spec = ResizeSpec(
                mode=str(values["mode"]),
                size=int(values["size"]),
                resample=str(values["resample"]).lower(),
                format=str(values["format"]).lower(),
                quality=int(values["quality"]),
                pad_color=_pad_color(values["pad_color"], "pad_color" in entry, f"{label} {entry}"),
            )
        except (TypeError, ValueError) as exc:
            raise UsageError(f"bad {label} {entry}: {exc}") from None
        container = _container(values["container"], "OPENIMAGES_RESIZE_CONTAINER" if "container" not in entry
                               else f"{label} {entry}: container")
        outputs.append(ResizedOutput(_folder_name(str(values["dir"]), "an output dir"), spec, container))
    folders = [output.dir for output in outputs]
    if len(set(folders)) != len(folders):
        raise UsageError(f"OPENIMAGES_OUTPUTS: each output needs its own dir, not {folders}")
    return tuple(outputs)


def _pad_color(value: object, own: bool, label: str) -> tuple[int, int, int]:
    """FitPad's padding colour: an output's own ``pad_color``, else OPENIMAGES_PAD_COLOR."""
    try:
        return parse_color(value)
    except ValueError as exc:
        raise UsageError(f"{label}: pad_color {exc}" if own else f"OPENIMAGES_PAD_COLOR: {exc}") from None


def _container(value: object, name: str) -> str:
    """A container's name, checked against the registry (``outputs.formats``)."""
    try:
        return container(str(value).lower()).name
    except UnknownFormat:
        raise UsageError(f"{name} must be one of {', '.join(CONTAINERS)}, not {value!r}") from None


def _count(value: object) -> int | None:
    """A whole number 0 or more, else ``None``."""
    try:
        number = int(str(value))
    except ValueError:
        return None
    return number if number >= 0 else None


def _hashes(value: object) -> tuple[str, ...]:
    """OPENIMAGES_HASHES: hashlib names every Python has (each a results column)."""
    names = value.split(",") if isinstance(value, str) else list(value or ())
    found = tuple(dict.fromkeys(str(name).strip().lower() for name in names if str(name).strip()))
    unknown = [name for name in found if name not in hashlib.algorithms_guaranteed or name.startswith("shake")]
    if unknown:
        known = ", ".join(sorted(name for name in hashlib.algorithms_guaranteed if not name.startswith("shake")))
        raise UsageError(f"OPENIMAGES_HASHES: {', '.join(unknown)} is not a hash this crawl can record ({known})")
    return found


def _size_filter(settings: BaseSettings) -> SizeFilter:
    """The image filters, each 0 (off) or positive."""
    values = {}
    for name in ("OPENIMAGES_MIN_IMAGE_SIDE", "OPENIMAGES_MAX_IMAGE_AREA", "OPENIMAGES_MAX_ASPECT_RATIO"):
        try:
            values[name] = float(settings[name] or 0)
        except (TypeError, ValueError):
            raise UsageError(f"{name}={settings[name]!r} is not a number") from None
        if not math.isfinite(values[name]) or values[name] < 0:
            raise UsageError(f"{name}={settings[name]!r} must be 0 (off) or a positive number")
        if name != "OPENIMAGES_MAX_ASPECT_RATIO" and not values[name].is_integer():
            raise UsageError(f"{name}={settings[name]!r} is not a whole number of pixels")
    ratio = values["OPENIMAGES_MAX_ASPECT_RATIO"]
    if 0 < ratio < 1:
        raise UsageError(f"OPENIMAGES_MAX_ASPECT_RATIO={ratio:g}: a ratio of the longer side to the shorter is 1 "
                         "or more (0 = off)")
    return SizeFilter(int(values["OPENIMAGES_MIN_IMAGE_SIDE"]), int(values["OPENIMAGES_MAX_IMAGE_AREA"]), ratio)


def _folder_name(value: str, name: str) -> str:
    if not value or value in (".", "..") or "/" in value or "\\" in value:
        raise UsageError(f"{name} must be a plain folder name, not {value!r}")
    if value == MASKS_DIR:
        raise UsageError(f"{name} cannot be {MASKS_DIR!r}: each subset's masks are there")
    return value


def output_sinks(config: CrawlConfig, store: Store, records: LocalStore) -> dict[str, OutputSink]:
    """The sink of each resized output, by its folder: files in the layout, or
    packs of a container (filled in ``records``' staging, numbered under the
    store's lock)."""
    return {output.dir: container_sink(config, store, records, output.dir, output.container)
            for output in config.outputs}


def originals_sink(config: CrawlConfig, store: Store, records: LocalStore) -> PackSink | None:
    """The originals' packs, or ``None`` when they are files (written by the pipeline itself)."""
    if config.originals_container == FILES:
        return None
    sink = container_sink(config, store, records, config.layout.originals_dir, config.originals_container)
    assert isinstance(sink, PackSink)
    return sink


def container_sink(config: CrawlConfig, store: Store, records: LocalStore, folder: str,
                   kind: str) -> OutputSink:
    """The sink of an output of container ``kind``: files in the layout, or packs."""
    if kind == FILES:
        return FilesSink(store, config.layout, folder)
    return PackSink(store, scratch_folder(records.root), folder, kind, config.pack_size,
                    lambda name: store.shared(records.root, name))


def open_crawl_store(
    settings: BaseSettings, schemes: dict[str, type[Store]] = STORE_SCHEMES, uri: str | None = None
) -> Store:
    """The store of IMAGES_STORE (or ``uri``), by its scheme; an unsupported one is a usage error."""
    try:
        return open_store(uri or str(settings["IMAGES_STORE"] or ""), schemes, store_options(settings))
    except (UnsupportedStore, ValueError) as exc:
        raise UsageError(str(exc)) from None


def records_store(settings: BaseSettings) -> LocalStore:
    """The local folder of the crawl's records: results CSVs and their parts, locks,
    the processes' status, the metadata cache. The store itself when it is a folder;
    for an object store, OPENIMAGES_WORK_DIR (by default a folder per bucket and
    prefix under ~/.cache/openimages-crawler), synced with the bucket (``store.sync``)."""
    return open_crawl_store(settings).records(str(settings.get("OPENIMAGES_WORK_DIR") or ""))


def check_store(store: Store) -> None:
    """Before anything is downloaded: an object store must answer (bucket,
    credentials, endpoint)."""
    try:
        store.check()
    except StoreUnavailable as exc:
        raise UsageError(str(exc)) from None


def isolate_shard_records(settings: BaseSettings, shard: Shard | None) -> None:
    """Shard K of N (N > 1) of an object store keeps its records in a work
    folder of its own, ``{work}/shard-KofN``: two shards on one machine (a
    fleet's jobs on one node) each replace their folder's results with the
    bucket's. They share the metadata cache, ``{work}/metadata``. A folder
    store is its own records folder (``Store.records`` ignores the work folder)
    and ``{store}/metadata`` is already its cache: the settings change nothing."""
    if shard is None or shard.count == 1:
        return
    work = records_store(settings).root
    settings.set("OPENIMAGES_WORK_DIR", str(work / f"shard-{part_label(shard.index, shard.count)}"), "cmdline")
    if not settings.get("OPENIMAGES_METADATA_DIR"):
        settings.set("OPENIMAGES_METADATA_DIR", str(work / METADATA_DIR), "cmdline")


def store_options(settings: BaseSettings) -> StoreOptions:
    """How to reach an object store, from Scrapy's own AWS_* settings; an unset one
    is left to boto3's chain (environment, ~/.aws files, an instance role)."""
    remember(settings.items())  # the secrets among them are masked in every log line
    verify = settings.get("AWS_VERIFY")
    if verify is not None and str(verify).lower() in {"true", "false", "1", "0"}:
        verify = settings.getbool("AWS_VERIFY")  # else the path of a CA bundle
    return StoreOptions(
        access_key_id=settings.get("AWS_ACCESS_KEY_ID") or None,
        secret_access_key=settings.get("AWS_SECRET_ACCESS_KEY") or None,
        session_token=settings.get("AWS_SESSION_TOKEN") or None,
        endpoint_url=settings.get("AWS_ENDPOINT_URL") or None,
        region_name=settings.get("AWS_REGION_NAME") or None,
        use_ssl=None if settings.get("AWS_USE_SSL") is None else settings.getbool("AWS_USE_SSL"),
        verify=verify,
        acl=settings.get("IMAGES_STORE_S3_ACL") or settings.get("FILES_STORE_S3_ACL") or None,
        concurrency=max(1, settings.getint("OPENIMAGES_STORE_CONCURRENCY")),
        unsafe_leases=settings.getbool("OPENIMAGES_UNSAFE_LEASES"),
    )


# The results feeds (FEEDS entries whose URI has %(subset)s): where the records are.
SUBSET_PARAM = "%(subset)s"


def subset_uri(uri_template: str, images_store: str, subset: str) -> str:
    return uri_template % {"images_store": images_store, "subset": subset}


def local_path(uri: str) -> str:
    """The local path of a feed URI (``file://`` or a plain path)."""
    return unquote(urlsplit(uri).path) if uri.startswith("file://") else uri


def subset_feed_paths(settings: BaseSettings, item_class: type, subset: str = "*") -> list[str]:
    """Paths (glob patterns with the default ``*``) of the per-subset FEEDS
    that accept ``item_class``."""
    images_store = str(records_store(settings).root)
    paths = []
    for uri_template, options in settings.getdict("FEEDS").items():
        if SUBSET_PARAM not in str(uri_template):
            continue
        classes = [load_object(c) for c in (options or {}).get("item_classes", ())]
        if not classes or any(issubclass(item_class, c) for c in classes):
            paths.append(local_path(subset_uri(str(uri_template), images_store, subset)))
    return paths


def results_files(settings: BaseSettings) -> dict[str, list[str]]:
    """Glob patterns of the success and failure CSVs, from FEEDS (what the
    ledger reads and a run's end merges)."""
    return {"success": subset_feed_paths(settings, SuccessRow), "failure": subset_feed_paths(settings, FailureRow)}
