"""Where each file of a row goes in the store: keys relative to the store's root."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class StoreLayout:
    """The store's folder names: ``{subset}/{dir}/{prefix}/{ImageID}.{ext}``.

    Keys are POSIX paths relative to the store's root, whatever the store.
    """

    originals_dir: str = "images-original"
    subdir_chars: int = 3

    def image_key(self, subset: str, folder: str, image_id: str, ext: str) -> str:
        if self.subdir_chars > 0:
            return f"{subset}/{folder}/{image_id[: self.subdir_chars]}/{image_id}.{ext}"
        return f"{subset}/{folder}/{image_id}.{ext}"

    def original_key(self, subset: str, image_id: str, url: str) -> str:
        return self.image_key(subset, self.originals_dir, image_id, original_extension(url))


def original_extension(url: str) -> str:
    """``png`` when the URL's path names a PNG, else ``jpg`` (Flickr originals)."""
    return "png" if urlsplit(url).path.lower().endswith(".png") else "jpg"
