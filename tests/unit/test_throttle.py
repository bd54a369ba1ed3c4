# -*- test-case-name: tests.unit.test_throttle -*-
"""
Tests for L{regproxy.auth.throttle} on its own; what clients see of it is
in L{tests.unit.test_userauth.FloodTests}.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from regproxy.auth.throttle import Budget, LoginThrottle, Throttled, addressKey


class AddressKeyTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        """
        An IPv4 client is its address.
        """
        self.assertEqual(addressKey("192.0.2.1"), "192.0.2.1")

    def test_ipv6(self) -> None:
        """
        An IPv6 client is its /64, so hopping addresses inside it gains
        nothing; an IPv4-mapped address is the IPv4 address.
        """
        self.assertEqual(addressKey("2001:db8::1"), addressKey("2001:db8::ffff:2"))
        self.assertEqual(addressKey("2001:db8::1"), "2001:db8::/64")
        self.assertNotEqual(addressKey("2001:db8::1"), addressKey("2001:db8:0:1::1"))
        self.assertEqual(addressKey("::ffff:192.0.2.1"), "192.0.2.1")

    @given(st.text(max_size=50))
    def test_anything(self, host: str) -> None:
        """
        Anything else is kept as it is, never an error.
        """
        self.assertIsInstance(addressKey(host), str)


class LoginThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LoginThrottle(
            self.clock,
            perAddress=Budget(6, 2.0),
            perPair=Budget(3, 10.0),
            checksPerAddress=2,
            checksPerAccount=3,
        )

    def failLogin(self, account: str, host: str) -> None:
        self.throttle.admit(account, host).finished(True)

    def test_pairBudget(self) -> None:
        """
        After its burst of failures a pair waits for the refill; another
        account from the same address, or the same account from another
        address, goes on.
        """
        for _ in range(3):
            self.failLogin("alice", "192.0.2.1")
        with self.assertRaises(Throttled) as caught:
            self.throttle.admit("alice", "192.0.2.1")
        self.assertEqual(caught.exception.retryAfter, 10)
        self.throttle.admit("bob", "192.0.2.1").finished(False)
        self.throttle.admit("alice", "192.0.2.2").finished(False)
        self.clock.advance(10)
        self.throttle.admit("alice", "192.0.2.1").finished(False)
        self.assertEqual(self.throttle.throttled, 1)

    def test_addressBudget(self) -> None:
        """
        An address that fails for many accounts runs out for all of them.
        """
        for i in range(6):
            self.failLogin(f"user{i}", "192.0.2.1")
        with self.assertRaises(Throttled) as caught:
            self.throttle.admit("carol", "192.0.2.1")
        self.assertEqual(caught.exception.retryAfter, 2)

    def test_successCostsNothing(self) -> None:
        """
        Good logins use no budget.
        """
        for _ in range(50):
            self.throttle.admit("alice", "192.0.2.1").finished(False)
        self.assertEqual(self.throttle.throttled, 0)

    def test_checksInFlight(self) -> None:
        """
        An address has only so many checks in flight; one finishing makes
        room.  Finishing twice releases once.
        """
        first = self.throttle.admit("alice", "192.0.2.1")
        self.throttle.admit("bob", "192.0.2.1")
        self.assertRaises(Throttled, self.throttle.admit, "carol", "192.0.2.1")
        first.finished(False)
        first.finished(False)
        self.throttle.admit("carol", "192.0.2.1")
        self.assertRaises(Throttled, self.throttle.admit, "dave", "192.0.2.1")

    def test_accountShare(self) -> None:
        """
        Guessing one account from many addresses holds at most its share of
        checks; the account's owner, from an address that has not failed,
        has a share of its own.
        """
        for i in range(4):
            self.failLogin("alice", f"192.0.2.{i}")
        held = [self.throttle.admit("alice", f"192.0.2.{i}") for i in range(3)]
        self.assertRaises(Throttled, self.throttle.admit, "alice", "192.0.2.3")
        self.throttle.admit("alice", "203.0.113.5").finished(False)
        held[0].finished(True)
        self.throttle.admit("alice", "192.0.2.3")
