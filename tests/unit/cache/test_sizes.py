"""
Tests for L{regproxy.cache.sizes}.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regproxy.cache.sizes import formatSize, parseSize

_FACTORS = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


class ParseSizeTests(SynchronousTestCase):
    def test_examples(self) -> None:
        """
        The sizes the issue names parse to the bytes they mean.
        """
        self.assertEqual(parseSize("20GiB"), 20 * 1024**3)
        self.assertEqual(parseSize("500MB"), 500 * 1000**2)
        self.assertEqual(parseSize("1.5G"), 1_500_000_000)
        self.assertEqual(parseSize("0"), 0)
        self.assertEqual(parseSize("1024"), 1024)
        self.assertEqual(parseSize(" 2 kib "), 2048)

    def test_garbageRejected(self) -> None:
        """
        Negative numbers, unknown units and empty text are a one-line
        C{ValueError}.
        """
        for text in ("", "-1", "12 parsecs", "GiB", "1.2.3", "1e9", "1 0"):
            with self.assertRaises(ValueError) as caught:
                parseSize(text)
            self.assertNotIn("\n", str(caught.exception))

    @given(
        st.integers(min_value=0, max_value=10**6),
        st.sampled_from(sorted(_FACTORS)),
        st.booleans(),
        st.booleans(),
    )
    def test_wholeNumbers(
        self, number: int, unit: str, withB: bool, upper: bool
    ) -> None:
        """
        Any whole number with any unit, in any case, with or without the
        C{B}, is that number times the unit's factor.
        """
        text = f"{number}{unit}{'B' if withB else ''}"
        text = text.upper() if upper else text.lower()
        self.assertEqual(parseSize(text), number * _FACTORS[unit])

    @given(st.text(max_size=20))
    def test_neverCrashes(self, text: str) -> None:
        """
        Any text either parses to a non-negative size or raises
        C{ValueError}.
        """
        try:
            size = parseSize(text)
        except ValueError:
            return
        self.assertGreaterEqual(size, 0)

    @given(st.integers(min_value=0, max_value=2**50))
    def test_formatRoundTrip(self, size: int) -> None:
        """
        A formatted size parses back to within the rounding of its one
        decimal (half a tenth of a unit that is at least 1: 5 %).
        """
        text = formatSize(size).replace(" ", "")
        self.assertLessEqual(abs(parseSize(text) - size), size // 20 + 1)
