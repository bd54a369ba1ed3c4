# -*- test-case-name: tests.unit.test_cli -*-
"""
The argument parser every C{regproxy} subcommand uses: a mistake is one
line that names it and says where the help is, not the usage text.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn


class OneLineParser(argparse.ArgumentParser):
    """
    An L{argparse.ArgumentParser} whose errors are one line, and which
    names an unknown option before complaining about a missing argument.
    """

    def _optionStrings(self) -> set[str]:
        strings: set[str] = set()
        for action in self._actions:
            strings.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for parser in action.choices.values():
                    strings |= parser._optionStrings()
        return strings

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> argparse.Namespace:
        if args is not None:
            known = self._optionStrings()
            for arg in args:
                if arg == "--":
                    break
                option = arg.split("=", 1)[0]
                if option.startswith("-") and option != "-":
                    if not any(k.startswith(option) for k in known):
                        self.error(f"unknown option {option}")
        return super().parse_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}; see '{self.prog} --help'\n")
