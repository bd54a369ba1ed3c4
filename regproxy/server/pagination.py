# -*- test-case-name: tests.unit.test_catalog -*-
"""
Lists answered a page at a time, as the distribution spec pages tags and
the catalog: sorted names, C{n} for the page size, C{last} for the name
the page starts after, and a C{Link} header to the next page.
"""

from __future__ import annotations

from urllib.parse import quote

from twisted.web.server import Request

from regproxy.server.errors import RegistryError
from regproxy.server.request import firstArgument


def pageOf(request: Request, names: list[str], path: str) -> list[str]:
    """
    The page of C{names} (sorted, without duplicates) that C{request}'s
    C{n} and C{last} ask for; sets C{Link} when there is a next page.

    @param path: The path the next page is asked at.
    @raise RegistryError: 400 C{PAGINATION_NUMBER_INVALID} for a bad C{n}.
    """
    names = sorted(set(names))
    last = firstArgument(request, b"last")
    if last is not None:
        names = [name for name in names if name > last]
    limit = firstArgument(request, b"n")
    if limit is None:
        return names
    try:
        count = int(limit)
    except ValueError:
        raise RegistryError(
            400, "PAGINATION_NUMBER_INVALID", "n must be a number"
        ) from None
    if count < 0:
        raise RegistryError(400, "PAGINATION_NUMBER_INVALID", "n must not be negative")
    if len(names) > count:
        names = names[:count]
        if names:
            link = f'<{path}?n={count}&last={quote(names[-1], safe="")}>; rel="next"'
            request.setHeader(b"Link", link.encode("utf-8"))
    return names
