# -*- test-case-name: tests.unit.test_broker -*-
"""
C{tags/list} for a fleet: its releases, answered by us and paginated with
C{n}, C{last} and C{Link} as the distribution spec says.
"""

from __future__ import annotations

import json

from twisted.web.server import Request

from regproxy.server.pagination import pageOf


def writeTags(request: Request, name: str, tags: list[str]) -> None:
    """
    Answer C{tags/list} for C{name} with C{tags}, sorted, one page of them.
    """
    page = pageOf(request, tags, f"/v2/{name}/tags/list")
    body = json.dumps({"name": name, "tags": page}).encode("utf-8")
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()
