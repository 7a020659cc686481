"""``{Subset}/ATTRIBUTION.csv`` and ``ATTRIBUTION.md``: who made each stored
image and under which license, rewritten from the success file whenever the
results are settled (the Flickr photos of Open Images are Creative Commons:
most need their author credited).

Titles, names and URLs come from metadata anyone can write: a cell a
spreadsheet would run as a formula is kept as text, and ``ATTRIBUTION.md`` is a
fixed text that no row's value ever reaches (no Markdown or HTML to escape)."""

from __future__ import annotations

import csv
import html
import os
import uuid
from pathlib import Path

from openimages_crawler.store.layout import ATTRIBUTION_CSV, ATTRIBUTION_MD

ATTRIBUTION_COLUMNS = ("ImageID", "Title", "Author", "AuthorProfileURL", "License", "OriginalLandingURL")
_UNESCAPED = ("Title", "Author")  # Flickr's HTML entities (O&#x27;Neil) as the characters they stand for
# First characters that make a spreadsheet read a cell as a formula (OWASP's CSV
# injection list, and the full-width forms some locales' spreadsheets take too).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")

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
            # RFC 4180's line end: a cell holding a bare CR is then quoted, not a row break
            # (with "\n" the csv module leaves it bare, and the rest of the title a new row).
            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow(ATTRIBUTION_COLUMNS)
            for row in csv.DictReader(source):
                writer.writerow([_as_text(html.unescape(row.get(name) or "") if name in _UNESCAPED
                                          else row.get(name) or "") for name in ATTRIBUTION_COLUMNS])
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    notes = folder / ATTRIBUTION_MD
    if not notes.is_file() or notes.read_text(encoding="utf-8") != ATTRIBUTION_TEXT:
        temp = folder / f".{ATTRIBUTION_MD}.{uuid.uuid4().hex}.part"
        temp.write_text(ATTRIBUTION_TEXT, encoding="utf-8")
        os.replace(temp, notes)
    return target


def _as_text(cell: str) -> str:
    """``cell`` as a spreadsheet shows it and never runs it: a leading apostrophe
    on a would-be formula (after the entities are unescaped: ``&#61;`` is ``=``)."""
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell
