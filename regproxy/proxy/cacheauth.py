# -*- test-case-name: tests.integration.test_cache -*-
"""
Who may get cached bytes: what the upstream said of a client's credentials
on a repository, as the cache's index remembers it.

Bytes are served for repository R only when they were fetched through R (a
link in the index) or the upstream has just confirmed R has them, and only
to a client whose credentials the upstream allowed on R within C{authTTL}
seconds (C{offlineGrace} while the upstream is unreachable); otherwise a
C{HEAD} upstream with the client's own authorization asks.
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IResponse

from regproxy.cache.index import CacheIndex
from regproxy.proxy.cacheasks import CacheTarget, Sender, Unreachable


@attrs.frozen
class CacheAuthorizations:
    """
    The upstream's decisions on (client, repository), kept in C{index}.
    """

    index: CacheIndex
    clock: IReactorTime
    authTTL: float
    offlineGrace: float

    async def allowed(
        self, fingerprint: str, target: CacheTarget, offline: bool = False
    ) -> bool:
        """
        Whether the upstream let this client pull C{target.repository}
        recently enough (within the grace, when it cannot be asked now).
        """
        window = self.offlineGrace if offline else self.authTTL
        decision = await self.index.getAuthorization(
            fingerprint, target.upstream, target.repository
        )
        if decision is None:
            return False
        allowed, checkedAt = decision
        return allowed and self.clock.seconds() - checkedAt <= window

    async def remember(self, fingerprint: str, target: CacheTarget, code: int) -> None:
        """
        Keep what the upstream's status C{code} says of this client.
        """
        if code in (401, 403) or 200 <= code < 300:
            await self.index.setAuthorization(
                fingerprint,
                target.upstream,
                target.repository,
                200 <= code < 300,
                self.clock.seconds(),
            )

    async def servable(
        self,
        target: CacheTarget,
        fingerprint: str,
        digest: str,
        upstream: Sender,
    ) -> tuple[bool, IResponse | None]:
        """
        Whether the cached C{digest} may go to this client under
        C{target.repository}: (yes or no, the upstream's refusal to relay).

        A link and a fresh authorization answer at once; otherwise a
        C{HEAD} upstream decides (and confirms the repository has the
        digest).  Unreachable, remembered decisions count up to the grace.
        """
        linked = await self.index.isLinked(target.upstream, target.repository, digest)
        if linked and await self.allowed(fingerprint, target):
            return True, None
        try:
            response = await upstream(b"HEAD")
        except Unreachable:
            return (linked and await self.allowed(fingerprint, target, True)), None
        await self.remember(fingerprint, target, response.code)
        if response.code == 200:
            await self.index.link(target.upstream, target.repository, digest)
            return True, None
        if response.code in (401, 403):
            return False, response
        return False, None
