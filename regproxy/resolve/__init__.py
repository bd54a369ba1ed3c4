# -*- test-case-name: tests.unit.test_resolve_balena -*-
"""
Resolvers: from the names clients use to upstream repositories.

L{IResolver} (in L{regproxy.resolve.interfaces}) has three implementations:
L{balena <regproxy.resolve.balena>} (fleet names through the balena API),
L{identity <regproxy.resolve.identity>} (names unchanged) and
L{static <regproxy.resolve.static>} (a TOML map).  Which one runs is decided
from the configuration by C{regproxy.app.makeResolver}.
"""
