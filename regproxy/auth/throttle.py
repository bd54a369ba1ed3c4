# -*- test-case-name: tests.unit.test_throttle -*-
"""
Login throttling: a flood of wrong passwords against one account, or from
one address, must not lock anybody else out.

Password checks are slow on purpose (bcrypt) and run on a small pool; left
alone, 40 clients guessing one account's password fill that pool and every
other login gets 503.  So, before a check:

  - Each client address (an IPv6 client by its /64) and each
    (account, address) pair has a budget of failed checks, a token bucket
    on the reactor clock: a burst, then one more every few seconds.  An
    address or pair without budget is answered 429 at once, without a
    check.
  - Each address may have only a few checks in flight at once (4).
  - Each account has a bounded share of the pool: a few checks in flight
    (8) from pairs that failed lately (guessing), and as many from pairs
    that did not (its owner, logging in from elsewhere).  A flood against
    one account from many addresses holds at most that share, and one
    address alone cannot fill even the part for pairs that did not fail.

There is deliberately no budget per account alone: that would let anyone
lock an account's owner out by guessing wrong, which is the attack this
module is here to stop.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Hashable

import attrs
from cachetools import LRUCache
from twisted.internet.interfaces import IReactorTime


class Throttled(Exception):
    """
    This login may not be checked now.

    @ivar retryAfter: Whole seconds after which it may be.
    """

    def __init__(self, retryAfter: int) -> None:
        super().__init__(retryAfter)
        self.retryAfter = retryAfter


def addressKey(host: str) -> str:
    """
    The address a budget is kept for: an IPv4 address itself, an IPv6
    address by its /64 (one machine commonly holds a whole /64).
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@attrs.frozen
class Budget:
    """
    A token bucket of failed checks.

    @ivar burst: How many failures in a row are allowed.
    @ivar refill: Seconds until one more is allowed.
    """

    burst: int
    refill: float

    def retryAfter(self, tokens: float) -> int:
        return max(1, math.ceil((1 - tokens) * self.refill))


@attrs.define
class Attempt:
    """
    A check that was let through; say how it went with L{finished}.
    """

    _throttle: LoginThrottle
    _keys: tuple[Hashable, ...]
    _done: bool = False

    def finished(self, failed: bool) -> None:
        if self._done:
            return
        self._done = True
        self._throttle._release(self._keys, failed)


class LoginThrottle:
    """
    Budgets of failed checks and shares of the pool (see the module
    docstring).

    @ivar throttled: How many logins were answered 429 (for metrics).
    """

    def __init__(
        self,
        clock: IReactorTime,
        perAddress: Budget = Budget(20, 3.0),
        perPair: Budget = Budget(5, 12.0),
        checksPerAddress: int = 4,
        checksPerAccount: int = 8,
        maxKeys: int = 65536,
    ) -> None:
        self._clock = clock
        self._perAddress = perAddress
        self._perPair = perPair
        self._checksPerAddress = checksPerAddress
        self._checksPerAccount = checksPerAccount
        # key -> (tokens, when they were counted); a key forgotten has its
        # whole budget again, which only ever errs towards letting in.
        self._buckets: LRUCache[Hashable, tuple[float, float]] = LRUCache(maxKeys)
        self._inFlight: dict[Hashable, int] = {}
        self.throttled = 0

    def _tokens(self, key: Hashable, budget: Budget, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(budget.burst), now))
        return min(float(budget.burst), tokens + (now - at) / budget.refill)

    def admit(self, account: str, host: str) -> Attempt:
        """
        Let a check for C{account} from C{host} go ahead.

        @raise Throttled: It may not, yet.
        """
        now = self._clock.seconds()
        address: Hashable = ("address", addressKey(host))
        pair: Hashable = ("pair", account, addressKey(host))
        for key, budget in ((address, self._perAddress), (pair, self._perPair)):
            tokens = self._tokens(key, budget, now)
            if tokens < 1:
                self.throttled += 1
                raise Throttled(budget.retryAfter(tokens))
        guessing = self._tokens(pair, self._perPair, now) < self._perPair.burst
        share: Hashable = ("account", account, guessing)
        if (
            self._inFlight.get(address, 0) >= self._checksPerAddress
            or self._inFlight.get(share, 0) >= self._checksPerAccount
        ):
            self.throttled += 1
            raise Throttled(1)
        for key in (address, share):
            self._inFlight[key] = self._inFlight.get(key, 0) + 1
        return Attempt(self, (address, pair, share))

    def _release(self, keys: tuple[Hashable, ...], failed: bool) -> None:
        address, pair, share = keys
        for key in (address, share):
            count = self._inFlight.pop(key) - 1
            if count:
                self._inFlight[key] = count
        if failed:
            now = self._clock.seconds()
            for key, budget in ((address, self._perAddress), (pair, self._perPair)):
                self._buckets[key] = (self._tokens(key, budget, now) - 1, now)
