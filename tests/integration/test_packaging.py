"""
Tests for the packaging: the built wheel carries the twistd plugin, and
twistd finds the C{regproxy} command.

These run child processes (pip, twistd), so they take seconds, not
milliseconds.
"""

import os
import shutil
import sys
import zipfile

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

_REPO = FilePath(__file__).parent().parent().parent()

# What a build never needs and must not be copied: the shared tree's
# caches, scratch and other builds.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".tox",
    ".venv",
    ".hypothesis",
    ".ruff_cache",
    "__pycache__",
    "_trial_temp*",
    "build",
    "dist",
    "*.egg-info",
    "dropin.cache",
    "bench",
    "tests",
)

# Build failures that say the machine cannot build a wheel offline, rather
# than that our packaging is wrong.
_CANNOT_BUILD = [
    b"invalid command 'bdist_wheel'",
    b"No module named 'wheel'",
    b"No module named 'setuptools'",
    b"Cannot import 'setuptools.build_meta'",
]


def _childEnvironment(**extra: str) -> dict[str, str]:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("REGPROXY_")
    }
    environ["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    environ.update(extra)
    return environ


class PackagingTests(TestCase):
    """
    Build the wheel as a user would, and look inside.
    """

    timeout = 300

    async def buildWheel(self) -> zipfile.ZipFile:
        """
        Build the project's wheel offline from a copy of the repository root
        (building in place would leave C{build/} and C{*.egg-info} in a
        working tree others share), skipping if this machine cannot build
        wheels offline.
        """
        scratch = FilePath(self.mktemp())
        source = scratch.child("src")
        out = scratch.child("wheels")
        shutil.copytree(_REPO.path, source.path, ignore=_NOT_SOURCES)
        out.makedirs()
        stdout, stderr, code = await getProcessOutputAndValue(
            sys.executable,
            [
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "-w",
                out.path,
                source.path,
            ],
            env=_childEnvironment(),
            path=scratch.path,
            reactor=reactor,
        )
        output = stdout + stderr
        if code != 0:
            for reason in _CANNOT_BUILD:
                if reason in output:
                    self.skipTest(
                        f"cannot build a wheel offline here ({reason.decode()}): "
                        "install setuptools and wheel into this environment "
                        "(pip install wheel) to run this test"
                    )
            self.fail(f"pip wheel exited {code}:\n{output.decode(errors='replace')}")
        wheels = [
            child for child in out.children() if child.basename().endswith(".whl")
        ]
        self.assertEqual(len(wheels), 1, wheels)
        archive = zipfile.ZipFile(wheels[0].path)
        self.addCleanup(archive.close)
        return archive

    async def test_wheelHasPlugin(self) -> None:
        """
        The wheel holds the plugin declaration and every module of the
        package (a subpackage missing from setup.cfg would be dropped), and no
        C{twisted/plugins/__init__.py} (which would hide Twisted's own
        plugins) nor a C{dropin.cache} (which would overwrite Twisted's).
        """
        names = set((await self.buildWheel()).namelist())
        self.assertIn("twisted/plugins/regproxy_plugin.py", names)
        self.assertIn("twisted/plugins/regproxy_endpoints.py", names)
        self.assertIn("regproxy/tap.py", names)
        modules = {
            child.path[len(_REPO.path) + 1 :]
            for child in _REPO.child("regproxy").walk()
            if child.basename().endswith(".py")
        }
        self.assertEqual(modules - names, set())
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/dropin.cache", names)
        self.assertFalse([name for name in names if name.startswith("tests/")])

    async def test_installedWheelHasCommand(self) -> None:
        """
        With only the built wheel installed (no working tree on the path),
        C{twistd --help} lists C{regproxy}.
        """
        archive = await self.buildWheel()
        target = FilePath(self.mktemp())
        stdout, stderr, code = await getProcessOutputAndValue(
            sys.executable,
            [
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--no-index",
                "--target",
                target.path,
                archive.filename,
            ],
            env=_childEnvironment(),
            path=os.path.dirname(target.path),
            reactor=reactor,
        )
        self.assertEqual(code, 0, (stdout + stderr).decode(errors="replace"))
        await self.assertTwistdLists(target.path)

    async def test_repositoryHasCommand(self) -> None:
        """
        With the repository on C{PYTHONPATH}, C{twistd --help} lists
        C{regproxy} and C{twistd regproxy --help} its options.
        """
        await self.assertTwistdLists(_REPO.path)

    async def assertTwistdLists(self, pythonPath: str) -> None:
        """
        Run C{twistd --help} and C{twistd regproxy --help} with
        C{pythonPath} first on the path, from a directory outside the
        repository so that the working tree is not found by accident.
        """
        environ = _childEnvironment(
            PYTHONPATH=os.pathsep.join(
                [pythonPath] + [p for p in [os.environ.get("PYTHONPATH")] if p]
            )
        )
        elsewhere = FilePath(self.mktemp())
        elsewhere.makedirs()
        twistd = ["-c", "from twisted.scripts.twistd import run; run()"]

        stdout, stderr, code = await getProcessOutputAndValue(
            sys.executable,
            twistd + ["--help"],
            env=environ,
            path=elsewhere.path,
            reactor=reactor,
        )
        self.assertEqual(code, 0, stderr.decode(errors="replace"))
        commands = stdout.split(b"Commands:", 1)[-1]
        self.assertIn(b"regproxy", commands.split())

        stdout, stderr, code = await getProcessOutputAndValue(
            sys.executable,
            twistd + ["regproxy", "--help"],
            env=environ,
            path=elsewhere.path,
            reactor=reactor,
        )
        self.assertEqual(code, 0, stderr.decode(errors="replace"))
        for option in [b"--listen=", b"--upstream=", b"--public-url=", b"--config="]:
            self.assertIn(option, stdout)
