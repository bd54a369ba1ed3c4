"""
The base the integration tests' mixins are type-checked against: each
mixin is mixed into a trial L{TestCase}, and mypy checks it as one.  At run
time it is a plain object, so trial does not collect a mixin as a test case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase as MixinBase
else:
    MixinBase = object

__all__ = ["MixinBase"]
