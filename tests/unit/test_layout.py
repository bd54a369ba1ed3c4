"""
Tests for the package layout: imports run one way only,

    names, server, config -> resolve, tls -> auth -> cache -> proxy -> app -> tap

so a newcomer can read the layers bottom up and a change low down cannot
reach into what stands on it.  The walk reads every C{import} statement,
including those inside functions, since a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

_PACKAGE = FilePath(__file__).parent().parent().parent().child("regproxy")

# The rank of each top-level part of regproxy: a module may import its own
# rank or lower.  mdns advertises the TLS listener's names, so it stands on
# tls; commands are the command-line tools beside the daemon, composed like
# the daemon is in app.
RANKS = {
    "names": 0,
    "server": 0,
    "config": 0,
    "metrics": 0,
    "resolve": 1,
    "tls": 1,
    "mdns": 2,
    "auth": 2,
    "cache": 3,
    "proxy": 4,
    "app": 5,
    "commands": 5,
    "daemon": 6,
    "tap": 6,
    "cli": 6,
}

# Test support, importable by tests and benchmarks, never by the daemon.
TESTING = "testing"


def _part(module: str) -> str:
    """
    The top-level part of C{regproxy.x.y}: C{x}.
    """
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: FilePath) -> list[str]:
    tree = ast.parse(path.getContent(), path.path)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
            # "from regproxy import x" names a part too.
            if node.module == "regproxy":
                found.extend(f"regproxy.{alias.name}" for alias in node.names)
    return found


def _modules() -> list[tuple[str, FilePath]]:
    modules = []
    for path in _PACKAGE.walk():
        if path.basename().endswith(".py"):
            relative = path.segmentsFrom(_PACKAGE)
            name = ".".join(["regproxy", *relative])[: -len(".py")]
            modules.append((name.removesuffix(".__init__"), path))
    return modules


class ImportDirectionTests(SynchronousTestCase):
    """
    The layers of regproxy import downwards only.
    """

    def test_everyPartHasARank(self) -> None:
        """
        Each top-level module and subpackage has a place in the order, so a
        new one cannot slip past the check.
        """
        parts = {_part(name) for name, _ in _modules()} - {"", TESTING}
        self.assertEqual(parts - set(RANKS), set())

    def test_importsRunDownwards(self) -> None:
        """
        No module imports from a part that ranks above its own.
        """
        wrong = []
        for name, path in _modules():
            part = _part(name)
            if part in ("", TESTING):
                continue
            for imported in _imports(path):
                if not imported.startswith("regproxy."):
                    continue
                target = _part(imported)
                if target == TESTING or RANKS.get(target, 0) > RANKS[part]:
                    wrong.append(f"{name} imports {imported}")
        self.assertEqual(wrong, [])

    def test_namesArePure(self) -> None:
        """
        The grammars in C{regproxy.names} use neither Twisted nor the rest
        of regproxy: they are values anyone can parse with.
        """
        wrong = []
        for name, path in _modules():
            if _part(name) != "names":
                continue
            for imported in _imports(path):
                top = imported.split(".")[0]
                if top == "twisted" or (
                    top == "regproxy" and _part(imported) != "names"
                ):
                    wrong.append(f"{name} imports {imported}")
        self.assertEqual(wrong, [])

    def test_walkSeesLazyImports(self) -> None:
        """
        An import inside a function counts, and so does C{from regproxy
        import x}: the walk finds both.
        """
        path = FilePath(self.mktemp())
        path.setContent(
            b"def f():\n    from regproxy.proxy import relay\n"
            b"from regproxy import app\n"
        )
        self.assertEqual(
            sorted(_imports(path)),
            ["regproxy", "regproxy.app", "regproxy.proxy"],
        )
