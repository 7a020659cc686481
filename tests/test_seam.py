"""The store seam (issue 25): only the store backends know which backend they
are. Everything else asks the Store protocol, never ``isinstance(x, ...Store)``
nor a ``remote`` flag of a store."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from tests.conftest import ROOT

PACKAGE = ROOT / "openimages_crawler"
# The backends and their machinery: the only modules that may tell one backend from another.
BACKENDS = frozenset(PACKAGE / "store" / f"{name}.py" for name in ("base", "local", "objects", "gcs", "lease", "lock", "sync"))


def _name(node: ast.expr) -> str:
    """The last name an expression spells: ``store`` of ``self.store``, ``open_store`` of ``open_store(uri)``."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _backend_tests(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, what) of each branch on the store's backend: an ``isinstance`` against a
    class named ``...Store``, or a read of a ``remote`` attribute (the flag stores had;
    no other attribute of the project has the name, so none can hide one)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) == "isinstance" and len(node.args) == 2:
            kinds = node.args[1]
            for kind in kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]:
                if _name(kind).endswith("Store"):
                    yield node.lineno, f"isinstance(..., {_name(kind)})"
        elif isinstance(node, ast.Attribute) and node.attr == "remote":
            yield node.lineno, ast.unparse(node)


def test_no_code_outside_the_store_backends_asks_which_backend_it_has() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}: {what}"
             for path in sorted(PACKAGE.rglob("*.py")) if path not in BACKENDS
             for line, what in _backend_tests(ast.parse(path.read_text(encoding="utf-8")))]
    assert not found, "branches on the store's backend (use the Store protocol):\n" + "\n".join(found)


def test_the_check_finds_what_it_looks_for() -> None:
    code = ("isinstance(store, (LocalStore, objects.GcsStore))\nisinstance(error, StoreLocked)\n"
            "self.store.remote\nopen_crawl_store(settings).remote\nbucket.remote\n")
    assert list(_backend_tests(ast.parse(code))) == [
        (1, "isinstance(..., LocalStore)"), (1, "isinstance(..., GcsStore)"),
        (3, "self.store.remote"), (4, "open_crawl_store(settings).remote"), (5, "bucket.remote")]


def test_the_backends_exist() -> None:
    """A renamed backend module would silently widen the check."""
    missing = [str(path.relative_to(ROOT)) for path in BACKENDS if not path.is_file()]
    assert not missing, missing
