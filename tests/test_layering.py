"""The layering: dataset/, imaging/, store/ and the other Scrapy-free modules
import with Scrapy and Twisted made unimportable, and every import of the
project points down its layers."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = "openimages_crawler"
# Every module under these packages (found at run time, so new ones are covered).
SCRAPY_FREE_PACKAGES = (
    "openimages_crawler.dataset",
    "openimages_crawler.imaging",
    "openimages_crawler.store",
    "openimages_crawler.checkpoint",
    "openimages_crawler.outputs",
    "openimages_crawler.job",
)
SCRAPY_FREE_MODULES = (
    "openimages_crawler.reasons",
    "openimages_crawler.exits",
    "openimages_crawler.redact",
    "openimages_crawler.monitor.progress",
    "openimages_crawler.monitor.report",
    "openimages_crawler.monitor.status",
    "openimages_crawler.monitor.summary",
    "openimages_crawler.testing.images",
    "openimages_crawler.testing.mirror",
    "openimages_crawler.testing.scrapyd",
    "openimages_crawler.testing.objects",
)

CODE = textwrap.dedent("""
    import importlib
    import pkgutil
    import sys

    BLOCKED = ("scrapy", "twisted")

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: this module must not need Scrapy or Twisted")
            return None

    def fail(name):  # a subpackage that cannot be imported: not skipped silently
        raise

    sys.meta_path.insert(0, Blocker())
    names = list(MODULES)
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        found = pkgutil.walk_packages(package.__path__, package_name + ".", onerror=fail)
        names += [info.name for info in found]
    for name in names:
        importlib.import_module(name)
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print(len(names), "modules imported:", " ".join(sorted(names)))
""")


def test_scrapy_free_modules_import_without_scrapy_or_twisted() -> None:
    code = f"PACKAGES = {SCRAPY_FREE_PACKAGES!r}\nMODULES = {SCRAPY_FREE_MODULES!r}\n{CODE}"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "openimages_crawler.store.local" in done.stdout  # the walk found the packages' modules


# The layers, bottom first: a module imports from its own layer or those below, never above.
LAYERS = (
    ("reasons", "exits", "redact"),
    ("store",),
    ("dataset",),
    ("imaging",),
    ("outputs",),
    ("checkpoint",),
    ("job",),
    ("testing",),
    ("crawl",),
    ("monitor",),
    ("run",),
    ("fleet",),
    ("commands", "settings"),
)


def project_imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, first part below openimages_crawler) of each project import in a file, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = node.module.split(".")
            if names[0] == PACKAGE:
                yield from ((node.lineno, part) for part in (names[1:2] or [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == PACKAGE and len(names) > 1:
                    yield node.lineno, names[1]


def test_imports_point_down_the_layers() -> None:
    layer_of = {name: number for number, names in enumerate(LAYERS) for name in names}
    source = ROOT / PACKAGE
    units = {path.stem if path.suffix else path.name for path in source.iterdir()
             if path.name != "__init__.py" and (path.suffix == ".py" or (path / "__init__.py").exists())}
    assert units == set(layer_of), "every module and package of the project has a layer"
    upward = []
    for path in sorted(source.rglob("*.py")):
        unit = path.relative_to(source).parts[0].removesuffix(".py")
        if unit == "__init__":
            continue
        for line, imported in project_imports(path):
            if layer_of.get(imported, -1) > layer_of[unit]:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert not upward, upward
