"""The layering: dataset/, imaging/, store/ and the other Scrapy-free modules
import with Scrapy and Twisted made unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT

# Every module under these packages (found at run time, so new ones are covered).
SCRAPY_FREE_PACKAGES = (
    "openimages_crawler.dataset",
    "openimages_crawler.imaging",
    "openimages_crawler.store",
    "openimages_crawler.exports",
)
SCRAPY_FREE_MODULES = (
    "openimages_crawler.reasons",
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
