"""``{Subset}/ATTRIBUTION.csv`` and ``ATTRIBUTION.md``: who made each stored
image and under which license, rewritten from the success file whenever the
results are settled (the Flickr photos of Open Images are Creative Commons:
most need their author credited)."""

from __future__ import annotations

import csv
import html
import os
import uuid
from pathlib import Path

ATTRIBUTION_CSV = "ATTRIBUTION.csv"
ATTRIBUTION_MD = "ATTRIBUTION.md"
ATTRIBUTION_COLUMNS = ("ImageID", "Title", "Author", "AuthorProfileURL", "License", "OriginalLandingURL")
_UNESCAPED = ("Title", "Author")  # Flickr's HTML entities (O&#x27;Neil) as the characters they stand for

ATTRIBUTION_TEXT = """\
# Attribution

The images in this folder are photos from Flickr, selected by Open Images, each under the
Creative Commons license named in `ATTRIBUTION.csv` (column `License`; Open Images lists only
CC BY 2.0 photos for most versions). This file is written by openimages-crawler; the CSV lists
every stored image: `ImageID, Title, Author, AuthorProfileURL, License, OriginalLandingURL`.

What CC BY (and the BY-SA, BY-ND, BY-NC variants) asks of anyone who shares these images or
work made from them (https://creativecommons.org/licenses/by/2.0/):

- **Credit the author**: the `Author` name, linking to `AuthorProfileURL` where practical.
- **Name the work and its source**: the `Title`, and a link to `OriginalLandingURL`.
- **Link the license**: the `License` URL.
- **Say if it was changed**: resized, cropped or re-encoded images are adaptations; say so
  (for example "resized from the original").
- **No endorsement**: do not suggest the author endorses you or your use.
- BY-SA: share adaptations under the same license. BY-ND: share no adaptations.
  BY-NC: no commercial use.

A dataset or model card that links to this file (or carries its rows) is the usual way to
give the credit for many images at once. This is a summary, not legal advice.
"""


def write_attribution(success_csv: Path) -> Path:
    """``ATTRIBUTION.csv`` beside ``success_csv`` from its rows (written whole
    through a temporary file and a rename), and ``ATTRIBUTION.md`` if missing."""
    folder = success_csv.parent
    target = folder / ATTRIBUTION_CSV
    temp = folder / f".{ATTRIBUTION_CSV}.{uuid.uuid4().hex}.part"
    try:
        with open(success_csv, newline="", encoding="utf-8") as source, \
                open(temp, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(ATTRIBUTION_COLUMNS)
            for row in csv.DictReader(source):
                writer.writerow([html.unescape(row.get(name) or "") if name in _UNESCAPED else row.get(name) or ""
                                 for name in ATTRIBUTION_COLUMNS])
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    notes = folder / ATTRIBUTION_MD
    if not notes.is_file() or notes.read_text(encoding="utf-8") != ATTRIBUTION_TEXT:
        temp = folder / f".{ATTRIBUTION_MD}.{uuid.uuid4().hex}.part"
        temp.write_text(ATTRIBUTION_TEXT, encoding="utf-8")
        os.replace(temp, notes)
    return target
