"""``scrapy export coco|yolo|voc``: labels for the images a store holds, in
the coordinates of the stored output they point at (``run.export``). No network."""

from __future__ import annotations

import argparse

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError
from scrapy.utils.log import configure_logging

from openimages_crawler.commands.setting_names import refuse_unknown_settings
from openimages_crawler.dataset.annotations import parse_class_list
from openimages_crawler.dataset.selection import SelectionError
from openimages_crawler.job.arguments import ArgumentError, parse_export_formats
from openimages_crawler.outputs.export import CLASS_ORDERS, DEFAULT_CLASS_ORDER, ORDERED_FORMAT
from openimages_crawler.outputs.formats import LABEL_FORMATS
from openimages_crawler.outputs.labels import YOLO_TASKS
from openimages_crawler.run.export import default_output, folder_store, run_export
from openimages_crawler.store.layout import is_subset_name

FORMAT_LIST = f"{'|'.join(LABEL_FORMATS)}[,…]"  # how the command line names the formats


def parse_formats(text: str) -> tuple[str, ...]:
    """``coco,yolo``: the formats, each once, checked."""
    try:
        return parse_export_formats(text)
    except ArgumentError as exc:
        raise UsageError(str(exc)) from None


def parse_class_order(order: str, formats: tuple[str, ...]) -> str:
    """``--class-order``: a name of ``CLASS_ORDERS``, other than the default only with YOLO."""
    order = order.strip().lower()
    if order not in CLASS_ORDERS:
        raise UsageError(f"--class-order {order!r}: give {' or '.join(CLASS_ORDERS)}")
    if order != DEFAULT_CLASS_ORDER and ORDERED_FORMAT not in formats:
        raise UsageError(f"--class-order {order} numbers YOLO's classes: list {ORDERED_FORMAT} among the formats "
                         "(COCO and VOC keep the ClassIndex)")
    return order


def parse_task(task: str, formats: tuple[str, ...]) -> str:
    """``--task``: what YOLO labels, a name of ``YOLO_TASKS``; other than detect only with YOLO."""
    task = task.strip().lower()
    if task not in YOLO_TASKS:
        raise UsageError(f"--task {task!r}: give {' or '.join(YOLO_TASKS)}")
    if task != YOLO_TASKS[0] and ORDERED_FORMAT not in formats:
        raise UsageError(f"--task {task} is what YOLO labels: list {ORDERED_FORMAT} among the formats "
                         "(COCO always carries the masks it has)")
    return task


class Command(ScrapyCommand):
    requires_project = False
    requires_crawler_process = False  # it never crawls
    default_settings = {"LOG_LEVEL": "INFO"}

    def syntax(self) -> str:
        return (f"{FORMAT_LIST} --store STORE [--subset NAME|all] [--output DIR_NAME] [--classes NAMES] "
                f"[--class-order {'|'.join(CLASS_ORDERS)}] [--task {'|'.join(YOLO_TASKS)}]")

    def short_desc(self) -> str:
        return "Write COCO, YOLO or Pascal VOC labels for the images a store holds"

    def long_desc(self) -> str:
        return ("Labels for the stored images of one output, from the store's annotations-bbox.csv and "
                "class-descriptions.csv (a crawl with -a classes=… or -a annotations=true writes them), in "
                "the coordinates of each stored image: STORE/{Subset}/coco/instances.json, "
                "STORE/{Subset}/yolo/ (labels/, images/ linking to the stored files, classes.txt, data.yaml), "
                "STORE/{Subset}/voc/Annotations/. A rerun replaces the previous export whole.")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--store", help="the store's folder (default: IMAGES_STORE)")
        parser.add_argument("--subset", default="all", help="a subset, or all: every subset with annotations "
                            "(default: all)")
        parser.add_argument("--output", dest="folder", help="the output the labels point at (default: the first "
                            "resized output of the settings, or the originals)")
        parser.add_argument("--classes", help="only these classes, comma-separated display names or label ids "
                            "(default: every class of the store's annotations)")
        parser.add_argument("--class-order", default=DEFAULT_CLASS_ORDER, help="how YOLO numbers the classes, "
                            + " or ".join(f"{name} ({what})" for name, what in CLASS_ORDERS.items())
                            + f"; default {DEFAULT_CLASS_ORDER}; COCO and VOC keep the ClassIndex")
        parser.add_argument("--task", default=YOLO_TASKS[0], help="what YOLO labels: detect (boxes, default) or "
                            "segment (the outlines of the store's masks)")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        settings = self.settings
        if (refused := refuse_unknown_settings(self.settings)) is not None:  # a misspelled name: one line, exit 2
            self.exitcode = refused
            return
        configure_logging(settings)  # no crawler process does it for this command
        if len(args) != 1:
            raise UsageError(f"give one format list: scrapy export {FORMAT_LIST} --store STORE")
        formats = parse_formats(args[0])
        class_order = parse_class_order(opts.class_order, formats)
        task = parse_task(opts.task, formats)
        store_dir = folder_store(opts.store, settings, "exports are written into a folder store, not an object store")
        if opts.subset != "all" and not is_subset_name(opts.subset):
            raise UsageError(f"--subset {opts.subset!r} is not a plain subset name")
        try:
            class_names = parse_class_list(opts.classes) if opts.classes is not None else None
        except SelectionError as exc:
            raise UsageError(str(exc)) from None
        subsets = None if opts.subset == "all" else [opts.subset]
        failed = run_export(store_dir, settings, formats, subsets, opts.folder or default_output(settings),
                            class_names, class_order, task)
        self.exitcode = 1 if failed else 0
