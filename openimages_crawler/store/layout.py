"""Where each file of a row goes in the store: keys relative to the store's root."""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# The names the store itself uses at its root (and in a work folder), one list: a
# subset folder never takes one of them (a row naming one is invalid_row).
STAGING_DIR = ".tmp"  # atomic writes in the making
LOCKS_DIR = ".locks"  # OS locks, or a bucket's leases
STATUS_DIR = ".status"  # each process's record
PENDING_DIR = ".pending"  # the rows a stopped process had in flight
FLEET_DIR = ".fleet"  # fleet.json
METADATA_DIR = "metadata"  # the metadata cache
REPORT_JSON, REPORT_HTML = "report.json", "report.html"
DATABASE_FILE = "openimages.duckdb"  # OPENIMAGES_DATABASE's default name
ROOT_NAMES = frozenset({STAGING_DIR, LOCKS_DIR, STATUS_DIR, PENDING_DIR, FLEET_DIR, METADATA_DIR, REPORT_JSON,
                        REPORT_HTML, DATABASE_FILE, f"{DATABASE_FILE}.wal"})
# A work folder's shard folders (shard-KofN), and database files of any name (a staging
# copy, .{name}.{host}-{pid}.tmp, included).
ROOT_PATTERN = re.compile(r"shard-\d+of\d+|.*\.duckdb(\.[\w.-]+\.tmp)?(\.wal)?", re.IGNORECASE)
SAFE_SUBSET = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Each subset's tree of instance masks (StoreLayout.mask_key): no output folder takes this name.
MASKS_DIR = "masks"
# Each subset's attribution files, beside its results files.
ATTRIBUTION_CSV, ATTRIBUTION_MD = "ATTRIBUTION.csv", "ATTRIBUTION.md"


def is_root_name(name: str) -> bool:
    """One of the store's own names at its root."""
    return name.lower() in ROOT_NAMES or name.startswith(".") or bool(ROOT_PATTERN.fullmatch(name))


def is_subset_name(value: str) -> bool:
    """A name usable as a subset folder: plain, and not one of the store's own."""
    return bool(SAFE_SUBSET.fullmatch(value)) and not is_root_name(value)


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

    def mask_key(self, subset: str, folder: str, image_id: str, mask_path: str) -> str:
        """``{subset}/masks/{folder}/{prefix}/{MaskPath}``: an image's masks, in a tree
        beside the images' (so a tree of images holds images only)."""
        prefix = f"{image_id[: self.subdir_chars]}/" if self.subdir_chars > 0 else ""
        return f"{subset}/{MASKS_DIR}/{folder}/{prefix}{mask_path}"


def original_extension(url: str) -> str:
    """``png`` when the URL's path names a PNG, else ``jpg`` (Flickr originals)."""
    return "png" if urlsplit(url).path.lower().endswith(".png") else "jpg"


# Results parts (``checkpoint.parts``): {Subset}/.parts/images-success.{K}of{M}.csv and its merge journal.
PARTS_DIR = ".parts"
JOURNAL_SUFFIX = ".merge"
PART_LABEL = re.compile(r"(\d+)of(\d+)")


def part_label(index: int, count: int) -> str:
    """The name of shard (or process share) ``index`` of ``count`` in part file names."""
    return f"{index}of{count}"


def owned_by(label: str, index: int, count: int) -> bool:
    """Whether the rows of part ``label`` all fall in shard ``index`` of
    ``count`` (share K of M lies inside shard K' of N when N divides M and K-1 ≡ K'-1 mod N)."""
    match = PART_LABEL.fullmatch(label)
    if match is None:
        return False
    part_index, part_count = int(match[1]), int(match[2])
    return part_count % count == 0 and (part_index - 1) % count == index - 1


def part_path(final: Path, label: str) -> Path:
    return final.parent / PARTS_DIR / f"{final.stem}.{label}{final.suffix}"


def part_pattern(final_pattern: str) -> str:
    """The glob of the parts of the results files ``final_pattern`` matches."""
    final = Path(final_pattern)
    return str(final.parent / PARTS_DIR / f"{glob.escape(final.stem)}.*{final.suffix}")


def final_of(part: Path) -> tuple[Path, str]:
    """The results file a part belongs to, and the part's label."""
    stem, _, suffix = part.name.rpartition(".")
    stem, _, label = stem.rpartition(".")
    return part.parent.parent / f"{stem}.{suffix}", label
