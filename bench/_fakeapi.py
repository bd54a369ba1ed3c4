"""
The fake balenaCloud API (regproxy.testing.fakebalena) as a process of its
own, for benchmarks: C{python bench/_fakeapi.py PORT REGISTRY_HOST}.

It prints one JSON line describing its fixture (the repositories and commits
the benchmark needs) and then C{listening on PORT}, and serves until killed.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from twisted.internet import reactor
    from twisted.web.server import Site

    from regproxy.testing.fakebalena import FakeBalenaAPI, defaultFixture

    port, registryHost = int(argv[0]), argv[1]
    fixture = defaultFixture(registryHost)
    slug = "acme/public-app"
    target = "2.0.0"
    description = {
        "slug": slug,
        "version": target,
        "repository": fixture.repository(slug, target),
        "commit": fixture.release(slug, target)["commit"],
    }
    site = Site(FakeBalenaAPI(fixture))
    site.noisy = False
    reactor.listenTCP(port, site, interface="127.0.0.1")
    print(json.dumps(description), flush=True)
    print(f"listening on {port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
