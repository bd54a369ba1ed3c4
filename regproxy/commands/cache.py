# -*- test-case-name: tests.unit.test_cachecommand -*-
"""
C{regproxy cache verify|stats|warm}: look after the LAN cache from a shell.

C{verify} and C{stats} read the cache directory the daemon uses (the same
C{--config}, C{REGPROXY_*} variables and C{--state-dir}); C{warm} pulls
references through the running regproxy, so what it fetches is kept, and
served, exactly as a client's pull would be.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from regproxy.config import ConfigError, loadConfig
from regproxy.names.sizes import formatSize

SUBCOMMANDS = ("verify", "stats", "warm")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="TOML file")
    common.add_argument(
        "--state-dir", default=argparse.SUPPRESS, help="the daemon's state directory"
    )
    common.add_argument(
        "--cache-dir", default=argparse.SUPPRESS, help="the daemon's cache directory"
    )
    parser = argparse.ArgumentParser(
        prog="regproxy cache", description="Look after regproxy's LAN cache."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "verify", help="re-hash every entry, drop the bad ones", parents=[common]
    )
    commands.add_parser(
        "stats",
        help="size, entries, hit ratio, bytes from the cache and upstream",
        parents=[common],
    )
    warm = commands.add_parser(
        "warm", help="pull references through the running regproxy", parents=[common]
    )
    warm.add_argument(
        "--via",
        default="http://127.0.0.1:80",
        help="the running regproxy's URL [default: http://127.0.0.1:80]",
    )
    warm.add_argument(
        "--platform",
        action="append",
        default=[],
        help="only this platform of an index, e.g. linux/arm64 (repeatable)",
    )
    warm.add_argument(
        "--user", help="USER:PASSWORD to pull with (also REGPROXY_WARM_USER)"
    )
    warm.add_argument("reference", nargs="+", metavar="REF")
    return parser


def formatStats(stats: Any) -> str:
    """
    What C{regproxy cache stats} prints.
    """
    answered = stats.hits + stats.misses + stats.coalesced + stats.stale
    served = stats.hits + stats.coalesced + stats.stale
    ratio = f"{100.0 * served / answered:.1f}%" if answered else "-"
    lines = [
        f"size              {formatSize(stats.sizeBytes)}",
        f"entries           {stats.entries}",
        f"requests          {answered} (hit {stats.hits}, miss {stats.misses}, "
        f"coalesced {stats.coalesced}, stale {stats.stale})",
        f"hit ratio         {ratio}",
        f"from the cache    {formatSize(stats.bytesFromCache)}",
        f"from upstream     {formatSize(stats.bytesFromUpstream)}",
        f"evictions         {stats.evictions}",
    ]
    if stats.perRepository:
        lines += [
            "",
            f"{'repository or fleet':40} {'hit':>6} {'miss':>6} "
            f"{'from cache':>12} {'upstream':>12}",
        ]
        for name, counts in sorted(stats.perRepository.items()):
            lines.append(
                f"{name[:40]:40} {counts.get('hits', 0):>6} "
                f"{counts.get('misses', 0):>6} "
                f"{formatSize(counts.get('bytesFromCache', 0)):>12} "
                f"{formatSize(counts.get('bytesFromUpstream', 0)):>12}"
            )
    return "\n".join(lines)


async def _offline(reactor: Any, command: str, directory: str, out: TextIO) -> int:
    from regproxy.cache.index import CacheIndex
    from regproxy.cache.store import BlobStore

    index = CacheIndex.open(os.path.join(directory, "index.sqlite"), reactor)
    try:
        if command == "stats":
            print(formatStats(await index.stats()), file=out)
            return 0
        store = BlobStore(directory, index, reactor, 0, 0)
        checked, dropped = await store.verifyAll()
        print(f"checked {checked} entries, dropped {dropped} bad ones", file=out)
        return 1 if dropped else 0
    finally:
        await index.close()


def _runOffline(command: str, directory: str, out: TextIO) -> int:
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    result: list[int] = []

    async def run(reactor: Any) -> None:
        result.append(await _offline(reactor, command, directory, out))

    try:
        react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    return result[0] if result else 1


def _warm(args: argparse.Namespace, environ: Mapping[str, str], out, err) -> int:
    from regproxy.commands.warmpull import Puller, WarmError

    user = args.user or environ.get("REGPROXY_WARM_USER")
    basic = None
    if user:
        name, _, password = user.partition(":")
        basic = (name, password)
    puller = Puller(args.via, basic)
    failed = 0
    for reference in args.reference:
        try:
            images = puller.pull(reference, tuple(args.platform))
        except (WarmError, OSError) as e:
            print(f"regproxy cache warm: {reference}: {e}", file=err)
            failed += 1
            continue
        print(f"{reference}: {len(images)} image(s)", file=out)
    print(f"read {puller.bytesRead} bytes through {args.via}", file=out)
    return 1 if failed else 0


def main(
    argv: list[str],
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.command == "warm":
        return _warm(args, environ, out, err)
    flags = {
        name: getattr(args, name)
        for name in ("state_dir", "cache_dir")
        if getattr(args, name, None) is not None
    }
    try:
        config = loadConfig(flags, environ, getattr(args, "config", None))
    except ConfigError as e:
        print(f"regproxy cache: {e}", file=err)
        return 2
    directory = config.cache_dir or os.path.join(config.state_dir, "cache")
    if not os.path.isdir(directory):
        print(f"regproxy cache: no cache in {directory}", file=err)
        return 1
    return _runOffline(args.command, directory, out)
