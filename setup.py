"""The package as ``scrapyd-deploy`` builds it (an egg for Scrapyd nodes).

Committed because scrapyd-deploy otherwise writes a template of its own that
packs every folder (tests and bench included) under the name ``project``.
Only ``openimages_crawler`` goes into the egg; the ``scrapy`` entry point tells
Scrapyd which settings module the project uses.
"""

from __future__ import annotations

import ast
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
PACKAGE = "openimages_crawler"


def package_version() -> str:
    """``__version__`` of the package if it declares one (read, not imported:
    building the egg must not import Scrapy), else 1.0."""
    tree = ast.parse((HERE / PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__version__" for target in node.targets
        ):
            return str(ast.literal_eval(node.value))
    return "1.0"


def package_files() -> dict[str, list[str]]:
    """Every non-Python file inside the package (none today): an egg without
    them would fail only on the Scrapyd nodes, long after the deploy."""
    root = HERE / PACKAGE
    found = [
        path.relative_to(root).as_posix()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    ]
    return {PACKAGE: found} if found else {}


setup(
    name="openimages-crawler",
    version=package_version(),
    description="Download, verify and resize Open Images with Scrapy",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data=package_files(),
    entry_points={"scrapy": [f"settings = {PACKAGE}.settings"]},
    python_requires=">=3.11",
    zip_safe=True,
)
