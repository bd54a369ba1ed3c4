# -*- test-case-name: tests.unit.cache.test_sizes -*-
"""
The size grammar, where CACHE_API.md says it is.  It lives in
L{regproxy.names.sizes} so that L{regproxy.config}, which imports only
from the first layer, can parse C{--cache-size} with it.
"""

from regproxy.names.sizes import formatSize, parseSize

__all__ = ["formatSize", "parseSize"]
