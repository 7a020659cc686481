"""The crawl's ``-a`` arguments, parsed and cross-checked once into one value.

No Scrapy import: a mistake is an ``ArgumentError`` with one line for the
user (the spider turns it into Scrapy's UsageError).
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openimages_crawler.dataset.annotations import parse_class_list
from openimages_crawler.dataset.catalogue import ANNOTATION_KINDS, DEFAULT_KINDS, splits_for
from openimages_crawler.dataset.retry import RetryFilter
from openimages_crawler.dataset.selection import SelectionError, Shard, parse_licenses
from openimages_crawler.dataset.source import SOURCES
from openimages_crawler.outputs.formats import LABEL_FORMATS
from openimages_crawler.store.layout import is_subset_name

# -a labels= -> the catalogue's annotation kind, and back.
LABEL_KINDS = {"boxes": "boxes", "verified": "labels"}


class ArgumentError(ValueError):
    """A usage mistake in the ``-a`` arguments; stops the crawl before it starts."""


@dataclass(frozen=True, slots=True)
class CrawlArguments:
    """What the user asked for. ``subset`` is ``None`` for ``all`` (rows keep
    their own Subset) and for a metadata file without ``-a subset``."""

    metadata: Path | None = None  # -a metadata=PATH
    version: int | None = None  # -a version=N (the catalogue fetches the metadata)
    subset: str | None = None
    splits: tuple[str, ...] = ()  # the version's splits the subset covers
    limit: int | None = None
    offset: int = 0
    ids: Path | None = None
    exclude: Path | None = None
    shard: Shard | None = None
    source: str = "original"
    classes: list[str] = field(default_factory=list)
    match_all: bool = False
    class_kinds: tuple[str, ...] = ()  # with classes: the kinds whose files say which images carry them
    only_matching: bool = True  # with classes: the annotation files keep the requested classes only
    per_class: int | None = None  # -a per_class=N: at most N images per requested class, per split
    seed: int = 0  # -a seed=S: which balanced sample per_class takes
    kinds: tuple[str, ...] = ()  # the kinds of annotation written beside the results (ANNOTATION_KINDS)
    exports: tuple[str, ...] = ()  # -a export=coco,yolo,voc: label files written after the crawl
    licenses: frozenset[str] | None = None  # -a licenses=by,by-sa: Creative Commons short names kept
    download_metadata: bool = True
    retry: RetryFilter | None = None  # recorded failures to try again

    @property
    def shard_numbers(self) -> tuple[int, int]:
        """The shard the run crawls, as (K, N); an unsharded run is 1 of 1."""
        return (self.shard.index, self.shard.count) if self.shard else (1, 1)

    @property
    def write_annotations(self) -> bool:
        return bool(self.kinds)

    @property
    def boxed_only(self) -> bool:
        """Only images with boxes can be selected (class boxes, or the CVDF
        mirror, which holds only those): the smaller boxable files serve."""
        return (bool(self.classes) and self.class_kinds == ("boxes",)) or self.source == "cvdf"

    @classmethod
    def from_given(cls, given: dict[str, Any]) -> CrawlArguments:
        """``parse`` for the arguments as given; an unknown name is an error
        (a misspelt ``-a subest=validation`` must not crawl everything)."""
        names = list(inspect.signature(cls.parse).parameters)
        for name in sorted(given):
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f"; did you mean -a {close[0]}?" if close else ""
                raise ArgumentError(f"unknown argument -a {name}{hint} (known: {', '.join(names)})")
        return cls.parse(**given)

    @classmethod
    def parse(
        cls,
        metadata: str | None = None,
        subset: str | None = None,
        limit: str | int | None = None,
        version: str | int | None = None,
        download_metadata: str | bool = True,
        ids: str | None = None,
        exclude: str | None = None,
        offset: str | int | None = None,
        shard: str | None = None,
        source: str = "original",
        classes: str | None = None,
        match: str | None = None,
        labels: str | None = None,
        only_matching: str | bool | None = None,
        annotations: str | bool | None = None,
        retry_failed: str | None = None,
        export: str | None = None,
        licenses: str | None = None,
        per_class: str | int | None = None,
        seed: str | int | None = None,
    ) -> CrawlArguments:
        """Checked in a fixed order: the same mistakes always report the same one."""
        if subset is not None and not is_subset_name(subset):
            raise ArgumentError(f"-a subset={subset!r} is not a plain subset name")
        parsed_shard, license_names, class_list = _parse_selection(shard, licenses, classes)
        _check_class_options(class_list, match=match, labels=labels, only_matching=only_matching,
                             per_class=per_class, seed=seed)
        per_class_count, seed_number = _parse_balance(per_class, seed)
        kinds, listed = _parse_kinds(annotations)
        exports, kinds = _parse_exports(export, kinds, class_list, version)
        class_kinds = _class_kinds(class_list, labels, kinds if listed else None)
        retry = _parse_retry(retry_failed)
        if source not in SOURCES:
            raise ArgumentError(f"-a source={source!r} is not original or cvdf")
        number, splits, subset = _parse_metadata_source(
            metadata, version, subset, class_list,
            annotations_asked=annotations is not None and bool(kinds))
        return cls(
            metadata=Path(metadata) if metadata and not version else None,
            version=number,
            subset=subset,
            splits=splits,
            limit=_parse_count("limit", limit),
            offset=_parse_count("offset", offset) or 0,
            ids=Path(ids) if ids else None,
            exclude=Path(exclude) if exclude else None,
            shard=parsed_shard,
            source=source,
            classes=class_list,
            match_all=match == "all",
            class_kinds=class_kinds,
            only_matching=_parse_bool("only_matching", only_matching) if only_matching is not None else True,
            per_class=per_class_count,
            seed=seed_number,
            # -a metadata=PATH: no catalogue, no annotations
            kinds=kinds if version else (),
            exports=exports,
            licenses=license_names,
            download_metadata=_parse_bool("download_metadata", download_metadata),
            retry=retry,
        )


def parse_export_formats(text: str) -> tuple[str, ...]:
    """``coco,yolo``: the label formats, each once (``-a export``, ``scrapy export``)."""
    formats = tuple(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
    unknown = [name for name in formats if name not in LABEL_FORMATS]
    if unknown or not formats:
        raise ArgumentError(f"-a export={text!r}: give {', '.join(LABEL_FORMATS)} (comma-separated)")
    return formats


def _parse_selection(
    shard: str | None, licenses: str | None, classes: str | None
) -> tuple[Shard | None, frozenset[str] | None, list[str]]:
    """The shard, the licenses kept and the classes, each parsed by its own
    module; their SelectionError is the user's usage mistake."""
    try:
        parsed_shard = Shard.parse(shard) if shard else None
        license_names = parse_licenses(licenses) if licenses is not None else None
        class_list = parse_class_list(classes) if classes is not None else []
    except SelectionError as exc:
        raise ArgumentError(str(exc)) from None
    return parsed_shard, license_names, class_list


def _check_class_options(
    class_list: list[str], *, match: str | None, labels: str | None, only_matching: str | bool | None,
    per_class: str | int | None = None, seed: str | int | None = None,
) -> None:
    """``match``, ``labels``, ``only_matching``, ``per_class`` and ``seed`` refine a
    class selection: without ``-a classes`` they would be silently ignored."""
    given = [f"-a {name}" for name, value in
             (("match", match), ("labels", labels), ("only_matching", only_matching),
              ("per_class", per_class), ("seed", seed)) if value is not None]
    if given and not class_list:
        raise ArgumentError(f"{', '.join(given)} only apply with -a classes")
    if match not in (None, "any", "all"):
        raise ArgumentError(f"-a match={match!r} is not any or all")
    if labels not in (None, *LABEL_KINDS):
        raise ArgumentError(f"-a labels={labels!r} is not boxes or verified")


_MAX_SEED = (1 << 64) - 1


def _parse_balance(per_class: str | int | None, seed: str | int | None) -> tuple[int | None, int]:
    """``-a per_class=N`` (1 or more: 0 would select nothing) and ``-a seed=S``
    (a whole number 0 to 2**64 - 1, default 0; only with per_class, which it steers)."""
    count = _parse_count("per_class", per_class)
    if count == 0:
        raise ArgumentError("-a per_class=0 would select nothing: give 1 or more")
    if seed is None or seed == "":
        return count, 0
    if count is None:
        raise ArgumentError("-a seed only applies with -a per_class")
    try:
        number = int(seed)
    except ValueError:
        raise ArgumentError(f"-a seed={seed!r} is not a whole number") from None
    if not 0 <= number <= _MAX_SEED:
        raise ArgumentError(f"-a seed={seed!r} must be 0 to {_MAX_SEED}")
    return count, number


def _parse_kinds(annotations: str | bool | None) -> tuple[tuple[str, ...] | None, bool]:
    """``-a annotations``: ``true`` (boxes and labels, as always), ``false``, or
    the kinds listed (``boxes,masks,narratives``); ``None`` when not given. And
    whether kinds were listed (they then say where classes are looked for)."""
    if annotations is None:
        return None, False
    if isinstance(annotations, bool) or annotations.strip().lower() in _BOOLEANS:
        return (DEFAULT_KINDS if _parse_bool("annotations", annotations) else ()), False
    kinds = tuple(dict.fromkeys(name.strip().lower() for name in annotations.split(",") if name.strip()))
    unknown = [name for name in kinds if name not in ANNOTATION_KINDS]
    if unknown or not kinds:
        raise ArgumentError(f"-a annotations={annotations!r}: give true, false or kinds among "
                            f"{', '.join(ANNOTATION_KINDS)} (comma-separated)")
    return kinds, True


def _class_kinds(class_list: list[str], labels: str | None, listed: tuple[str, ...] | None) -> tuple[str, ...]:
    """Where ``-a classes`` are looked for: the kind ``-a labels`` names
    (boxes by default), or every kind with classes that ``-a annotations`` lists."""
    if not class_list:
        return ()
    if listed is None:
        return (LABEL_KINDS[labels or "boxes"],)
    if labels is not None:
        raise ArgumentError("-a labels applies with -a annotations=true; with kinds listed, classes "
                            "are looked for in them: list labels for verified image labels")
    found = tuple(kind for kind in listed if ANNOTATION_KINDS[kind].label_columns)
    if not found:
        raise ArgumentError(f"-a classes: none of -a annotations={','.join(listed)} has classes; "
                            "add boxes, labels, masks, points or relationships")
    return found


def _parse_exports(
    export: str | None, kinds: tuple[str, ...] | None, class_list: list[str],
    version: str | int | None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The export formats, and the kinds of annotation written.

    Annotations are written by default when classes select the images (an id
    list or a shard would otherwise fetch gigabytes nobody asked for). An
    export needs the boxes or the masks: asking for one writes the boxes
    unless told otherwise.
    """
    exports = parse_export_formats(export) if export is not None else ()
    if kinds is None:
        kinds = DEFAULT_KINDS if class_list or exports else ()
    if exports and not {"boxes", "masks"} & set(kinds):
        raise ArgumentError("-a export needs the boxes or the masks: drop -a annotations=false, or list "
                            "boxes or masks in it")
    if exports and not version:
        raise ArgumentError("-a export needs -a version=N (the catalogue knows its annotations)")
    return exports, kinds


def _parse_retry(retry_failed: str | None) -> RetryFilter | None:
    """The recorded failures to try again; a bad filter is a usage mistake."""
    try:
        return RetryFilter.parse(retry_failed) if retry_failed is not None else None
    except ValueError as exc:
        raise ArgumentError(str(exc)) from None


def _parse_metadata_source(
    metadata: str | None, version: str | int | None, subset: str | None, class_list: list[str], *,
    annotations_asked: bool,
) -> tuple[int | None, tuple[str, ...], str | None]:
    """The catalogue's version number, the splits ``subset`` covers and the
    subset rows are given (``None`` for ``all``), or a metadata file that exists.

    Only the catalogue knows the annotations, so classes and an explicit
    ``-a annotations=true`` need a version.
    """
    if metadata and version:
        raise ArgumentError("give -a metadata=PATH or -a version=N, not both")
    if class_list and not version:
        raise ArgumentError("-a classes needs -a version=N (the catalogue knows its annotations)")
    if annotations_asked and not version:
        raise ArgumentError("-a annotations=true needs -a version=N (the catalogue knows its annotations)")
    if version:
        if not subset:
            raise ArgumentError("-a version=N needs -a subset=train|validation|test|all")
        number = _parse_version(version)
        try:
            splits = splits_for(number, subset)
        except ValueError as exc:
            raise ArgumentError(str(exc)) from None
        return number, splits, None if subset == "all" else subset
    if metadata:
        if not Path(metadata).is_file():
            raise ArgumentError(f"metadata file {metadata} does not exist")
        return None, (), subset
    raise ArgumentError(
        "give the metadata: scrapy crawl openimages -a version=N -a subset=NAME, "
        "or -a metadata=PATH"
    )


def _parse_version(version: str | int) -> int:
    try:
        return int(version)
    except ValueError:
        raise ArgumentError(f"-a version={version!r} is not a version number") from None


_BOOLEANS = ("1", "true", "yes", "0", "false", "no")


def _parse_bool(name: str, value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ArgumentError(f"-a {name}={value!r} is not true or false")


def _parse_count(name: str, value: str | int | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        count = int(value)
    except ValueError:
        raise ArgumentError(f"-a {name}={value!r} is not a whole number") from None
    if count < 0:
        raise ArgumentError(f"-a {name}={value!r} must be 0 or more")
    return count
