# -*- test-case-name: tests.unit.test_requestlog -*-
"""
C{--log-format json}: one JSON object per line, for log collectors.

A request's line carries the same fields as the text form (see
L{regproxy.server.site.RegproxySite.log}) as JSON members; every other
event becomes its formatted message.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

#: The fields of a request's log line, in the order they are written.
REQUEST_FIELDS = (
    "client",
    "account",
    "method",
    "path",
    "name",
    "repository",
    "code",
    "bytes",
    "duration",
    "upstream",
    "cache",
    "aborted",
    "received",
)


def jsonRecord(event: dict[str, Any]) -> dict[str, Any]:
    """
    The JSON object for one log event.
    """
    when = datetime.fromtimestamp(event.get("log_time", 0.0), timezone.utc)
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "system": event.get("log_system") or event.get("log_namespace") or "-",
    }
    if event.get("regproxy_request"):
        record["event"] = "request"
        for field in REQUEST_FIELDS:
            value = event.get(field)
            # The text form's "-" for "nothing": null here.
            record[field] = None if value == "-" else value
        record["duration"] = round(float(record["duration"] or 0.0), 6)
        return record
    record["message"] = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return record


@implementer(ILogObserver)
class JSONLineObserver:
    """
    Writes each event to C{out} as one line of JSON.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(jsonRecord(event), default=str, ensure_ascii=False)
        self._out.write(line + "\n")
        self._out.flush()
