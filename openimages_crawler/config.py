"""The crawl's own settings, read and checked once for the spider and the pipeline."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from scrapy.exceptions import UsageError
from scrapy.settings import BaseSettings

from .imaging import ResizeSpec
from .storage import StoreLayout


@dataclass(frozen=True, slots=True)
class CrawlConfig:
    """What to store and how to verify it, from the ``OPENIMAGES_*`` settings."""

    layout: StoreLayout
    save_originals: bool
    resize: ResizeSpec | None
    check_md5_if_exists: bool
    max_pixels: int
    workers: int
    fast_resize: bool

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> CrawlConfig:
        try:
            resize = (
                ResizeSpec(
                    mode=settings.get("OPENIMAGES_RESIZE_MODE", "ShrinkToFit"),
                    size=settings.getint("OPENIMAGES_RESIZE_SIZE", 224),
                    resample=str(settings.get("OPENIMAGES_RESAMPLE", "lanczos")).lower(),
                    format=str(settings.get("OPENIMAGES_RESIZE_FORMAT", "jpg")).lower(),
                    quality=settings.getint("OPENIMAGES_RESIZE_QUALITY", 90),
                )
                if settings.getbool("OPENIMAGES_RESIZE", True)
                else None
            )
        except ValueError as exc:
            raise UsageError(f"bad resize setting: {exc}") from exc
        save_originals = settings.getbool("OPENIMAGES_SAVE_ORIGINALS", False)
        if resize is None and not save_originals:
            raise UsageError(
                "nothing to store: set OPENIMAGES_RESIZE=True or OPENIMAGES_SAVE_ORIGINALS=True"
            )
        subdir_chars = settings.getint("OPENIMAGES_SUBDIR_CHARS", 3)
        if subdir_chars < 0:
            raise UsageError("OPENIMAGES_SUBDIR_CHARS must be 0 or more")
        layout = StoreLayout(
            root=Path(settings.get("IMAGES_STORE") or "openimages"),
            originals_dir=_folder_name(settings, "OPENIMAGES_ORIGINALS_DIR", "images-original"),
            resized_dir=_folder_name(settings, "OPENIMAGES_RESIZED_DIR", "images-resized"),
            subdir_chars=subdir_chars,
        )
        workers = settings.getint("OPENIMAGES_WORKERS", 0) or os.cpu_count() or 1
        return cls(
            layout=layout,
            save_originals=save_originals,
            resize=resize,
            check_md5_if_exists=settings.getbool("OPENIMAGES_CHECK_MD5_IF_EXISTS", True),
            max_pixels=settings.getint("OPENIMAGES_MAX_PIXELS", 178956970),
            workers=workers,
            fast_resize=settings.getbool("OPENIMAGES_FAST_RESIZE", True),
        )


def _folder_name(settings: BaseSettings, name: str, default: str) -> str:
    value = str(settings.get(name) or default)
    if value in (".", "..") or "/" in value or "\\" in value:
        raise UsageError(f"{name} must be a plain folder name, not {value!r}")
    return value
