"""Dataset preparation: from the crawl's arguments to the rows it will take.

Blocking work done once before the crawl (no Scrapy import): the class names
are resolved first (a typo stops the crawl before any big download), then
the image metadata and the annotation files are fetched and cached, the
images carrying the classes are found, and the selection is assembled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from openimages_crawler.dataset.annotations import ClassFilter, ClassNames
from openimages_crawler.dataset.catalogue import (
    ANNOTATION_KINDS,
    DEFAULT_KINDS,
    VERSIONS,
    Parts,
    sources_for,
    version_of,
)
from openimages_crawler.dataset.fetch import MetadataFetcher
from openimages_crawler.dataset.masks import MaskArchives
from openimages_crawler.dataset.idset import IdSet
from openimages_crawler.dataset.rows import (
    MetadataError,
    count_lines,
    iter_rows,
    read_header,
)
from openimages_crawler.dataset.selection import (
    IdList,
    MetadataRecord,
    Selection,
    SelectionError,
    read_exclusions,
    read_id_list,
)
from openimages_crawler.job.arguments import (
    LABEL_KINDS,
    ArgumentError,
    CrawlArguments,
)

logger = logging.getLogger(__name__)

_KIND_NAMES = {"boxes": "bounding boxes", "labels": "human-verified image labels", "masks": "instance masks",
               "points": "point labels", "relationships": "visual relationships",
               "narratives": "localized narratives"}


@dataclass(frozen=True, slots=True)
class MetadataOptions:
    """Where ``-a version=N`` metadata comes from and is cached."""

    cache: Path  # the local folder the files are cached in
    url: str  # OPENIMAGES_METADATA_URL
    max_row_bytes: int  # OPENIMAGES_MAX_ROW_BYTES: longer rows are invalid rows
    verify: bool = True  # OPENIMAGES_METADATA_VERIFY
    keep_archives: bool = False  # OPENIMAGES_SAVE_TARBALLS
    stop: threading.Event | None = None  # set: a download in progress gives up
    user_agent: str = ""  # the crawl's (USER_AGENT): metadata requests say who crawls too


@dataclass
class DatasetPlan:
    """The prepared dataset: the metadata files, their common header, the
    selection, and the annotation files the crawl copies from."""

    metadata_files: list[Path]
    header: list[str]
    selection: Selection
    file_subsets: list[str]  # per metadata file: its split, "" when it has several or none
    max_row_bytes: int
    class_filter: ClassFilter | None = None
    annotation_files: dict[tuple[str, str], list[Path]] = field(default_factory=dict)  # (kind, split) -> its parts
    class_names: Path | None = None  # the version's class descriptions, with annotations
    extras: list[Path] = field(default_factory=list)  # files explaining the kinds written (their classes, ...)
    masks: MaskArchives | None = None  # where the selected images' mask PNGs come from

    def records(self) -> Iterator[MetadataRecord]:
        """Rows of every metadata file that the selection takes."""
        return self.selection.rows(
            (fields, problem, file_subset)
            for path, file_subset in zip(self.metadata_files, self.file_subsets, strict=True)
            for fields, problem in iter_rows(path, self.header, self.max_row_bytes)
        )

    def estimate_rows(self) -> int:
        """Rows the crawl will handle, estimated cheaply (line breaks in the
        metadata files, narrowed by the selection): a few seconds for GBs."""
        return self.selection.estimate(sum(count_lines(path) for path in self.metadata_files))


def selection_of(arguments: CrawlArguments) -> Selection:
    """The filters the arguments name (id lists read here: local files, no
    download), for ``prepare`` to complete with classes."""
    try:
        return Selection(
            subset=arguments.subset,
            ids=read_id_list(arguments.ids) if arguments.ids else None,
            exclude=read_exclusions(arguments.exclude) if arguments.exclude else None,
            shard=arguments.shard,
            licenses=arguments.licenses,
            offset=arguments.offset,
            limit=arguments.limit,
        )
    except SelectionError as exc:
        raise ArgumentError(str(exc)) from exc


def prepare(arguments: CrawlArguments, options: MetadataOptions, selection: Selection) -> DatasetPlan:
    """Everything the crawl needs before its first request; ``ArgumentError``
    for anything the user must fix."""
    try:
        return _Preparation(arguments, options).run(selection)
    except (MetadataError, SelectionError) as exc:
        raise ArgumentError(str(exc)) from exc


class _Preparation:
    def __init__(self, arguments: CrawlArguments, options: MetadataOptions) -> None:
        self.arguments = arguments
        self.options = options

    @cached_property
    def fetcher(self) -> MetadataFetcher:
        """Only a crawl of a version fetches (a metadata file of one's own needs no URL)."""
        options = self.options
        return MetadataFetcher(
            options.cache,
            options.url,
            verify=options.verify,
            keep_archives=options.keep_archives,
            download=self.arguments.download_metadata,
            stop=options.stop,
            user_agent=options.user_agent,
        )

    def run(self, selection: Selection) -> DatasetPlan:
        arguments = self.arguments
        if arguments.version is not None:
            self.check_kinds()
        class_filter = self.resolve_classes() if arguments.classes else None
        if arguments.version is None:
            assert arguments.metadata is not None
            files, file_subsets = [arguments.metadata], [""]
        else:
            sources = sources_for(arguments.version, arguments.subset or "all", boxed_only=arguments.boxed_only)
            files = self.fetcher.csv_paths(sources)
            # One file per split: rows without a Subset belong to their file's split.
            one_each = len(sources) == len(arguments.splits)
            file_subsets = list(arguments.splits) if one_each else [""] * len(sources)
        plan = DatasetPlan(files, _common_header(files), selection, file_subsets,
                           self.options.max_row_bytes, class_filter)
        if arguments.licenses is not None and "License" not in plan.header:
            raise ArgumentError(f"-a licenses: {files[0]} has no License column to match")
        if class_filter is not None or arguments.write_annotations:
            plan.annotation_files = self.fetch_annotations()
            plan.class_names = self.class_names_file()
            plan.extras = self.fetch_extras()
        if "masks" in arguments.kinds:
            assert arguments.version is not None
            plan.masks = MaskArchives(self.fetcher, version_of(arguments.version).annotations.mask_archives)
        if class_filter is not None:
            selection.classes = self.images_of_classes(class_filter, plan.annotation_files)
        return plan

    def check_kinds(self) -> None:
        """Each kind the classes are looked for in, and each kind asked for
        beyond boxes and labels, exists for every split of the version."""
        arguments = self.arguments
        assert arguments.version is not None
        annotations = version_of(arguments.version).annotations
        kinds = [*arguments.class_kinds, *(kind for kind in arguments.kinds if kind not in DEFAULT_KINDS)]
        for kind in dict.fromkeys(kinds):
            for split in arguments.splits:
                if split in annotations.of_kind(kind):
                    continue
                hint = "another subset"
                if kind in LABEL_KINDS.values() and arguments.class_kinds == (kind,):
                    other = "labels" if kind == "boxes" else "boxes"
                    if split in annotations.of_kind(other):
                        argument = next(name for name, value in LABEL_KINDS.items() if value == other)
                        hint = f"-a labels={argument} or {hint}"
                elif kind not in DEFAULT_KINDS:
                    having = [str(number) for number, version in VERSIONS.items()
                              if split in version.annotations.of_kind(kind)]
                    hint = f"version {' or '.join(having)}" if having else hint
                raise ArgumentError(
                    f"version {arguments.version} has no {_KIND_NAMES[kind]} for {split}: try {hint}"
                )

    def resolve_classes(self) -> ClassFilter:
        """``-a classes`` as label ids, from the version's class descriptions."""
        resolved = ClassNames.load(self.class_names_file()).resolve(self.arguments.classes)
        for name, mids in resolved.items():
            logger.info("Class %r is %s", name, ", ".join(sorted(mids)))
        return ClassFilter(resolved, match_all=self.arguments.match_all)

    def class_names_file(self) -> Path:
        assert self.arguments.version is not None
        (path,) = self.fetcher.csv_paths([version_of(self.arguments.version).annotations.class_names])
        return path

    def fetch_annotations(self) -> dict[tuple[str, str], list[Path]]:
        """The annotation files the class selection and the annotation output need."""
        arguments = self.arguments
        assert arguments.version is not None
        annotations = version_of(arguments.version).annotations
        kinds = dict.fromkeys([*arguments.kinds, *(arguments.class_kinds if arguments.classes else ())])
        wanted: dict[tuple[str, str], Parts] = {
            (kind, split): annotations.of_kind(kind)[split]
            for kind in kinds
            for split in arguments.splits
            if split in annotations.of_kind(kind)
        }
        paths = iter(self.fetcher.csv_paths([source for parts in wanted.values() for source in parts]))
        return {key: [next(paths) for _ in parts] for key, parts in wanted.items()}

    def fetch_extras(self) -> list[Path]:
        """The files that explain the kinds written: the segmentation classes,
        the relationships' attributes and triplets."""
        assert self.arguments.version is not None
        extras = version_of(self.arguments.version).annotations.extras
        return self.fetcher.csv_paths([source for kind in self.arguments.kinds for source in extras.get(kind, ())])

    def images_of_classes(self, class_filter: ClassFilter, files: dict[tuple[str, str], list[Path]]) -> IdList:
        """The images carrying the classes in any of the kinds looked in, split by
        split; with ``-a per_class``, a balanced sample of them."""
        arguments = self.arguments
        by_split = {}
        for split in arguments.splits:
            found: dict[str, int] = {}
            for kind in arguments.class_kinds:
                for path in files[(kind, split)]:
                    logger.info("Finding the images of %s in %s", ", ".join(arguments.classes), path)
                    try:
                        class_filter.found(ANNOTATION_KINDS[kind], path, found)
                    except (MetadataError, OSError) as exc:
                        raise ArgumentError(f"cannot read {path}: {exc}") from exc
            carrying = class_filter.images(found)
            level = logging.INFO if carrying else logging.WARNING
            logger.log(level, "%d %s images carry %s %s", len(carrying), split,
                       "all of" if arguments.match_all else "any of", ", ".join(arguments.classes))
            if arguments.per_class is not None:
                # Balanced before the other filters: every shard of the split takes the same set.
                del carrying  # (millions of ids on train: freed before the sort)
                carrying = class_filter.balanced(found, arguments.per_class, arguments.seed)
                counts = class_filter.counts(found, carrying)
                logger.info("%d %s images taken with -a per_class=%d seed=%d: %s", len(carrying), split,
                            arguments.per_class, arguments.seed,
                            ", ".join(f"{name} {count}" for name, count in counts.items()))
            by_split[split] = IdSet(carrying)
        return IdList(by_split=by_split)


def _common_header(files: list[Path]) -> list[str]:
    headers = [read_header(path) for path in files]
    if any(header != headers[0] for header in headers):
        raise ArgumentError("the metadata files do not share one header")
    return headers[0]
