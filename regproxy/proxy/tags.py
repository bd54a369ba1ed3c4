# -*- test-case-name: tests.unit.test_broker -*-
"""
C{tags/list} for a fleet: its releases, answered by us and paginated with
C{n}, C{last} and C{Link} as the distribution spec says.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from twisted.web.server import Request

from regproxy.server.errors import RegistryError
from regproxy.server.request import firstArgument


def _page(request: Request, name: str, tags: list[str]) -> list[str]:
    """
    The page of C{tags} the request asks for; sets C{Link} to the next.
    """
    last = firstArgument(request, b"last")
    if last is not None:
        tags = [tag for tag in tags if tag > last]
    limit = firstArgument(request, b"n")
    if limit is None:
        return tags
    try:
        count = int(limit)
    except ValueError:
        raise RegistryError(
            400, "PAGINATION_NUMBER_INVALID", "n must be a number"
        ) from None
    if count < 0:
        raise RegistryError(400, "PAGINATION_NUMBER_INVALID", "n must not be negative")
    if len(tags) > count:
        tags = tags[:count]
        if tags:
            nextURL = f"/v2/{name}/tags/list?n={count}&last={quote(tags[-1])}"
            request.setHeader(b"Link", f'<{nextURL}>; rel="next"'.encode("utf-8"))
    return tags


def writeTags(request: Request, name: str, tags: list[str]) -> None:
    """
    Answer C{tags/list} for C{name} with C{tags}, sorted, one page of them.
    """
    page = _page(request, name, sorted(set(tags)))
    body = json.dumps({"name": name, "tags": page}).encode("utf-8")
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()
