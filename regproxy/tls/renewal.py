# -*- test-case-name: tests.unit.test_renewal -*-
"""
The TLS listener's side of the local CA: serve the server certificate the
CA signed, and issue a new one while running when this machine's names
change or the certificate nears its expiry, so clients that trust the CA
never need a restart of ours or a new C{ca.crt} of theirs.

The names are looked at when a connection arrives, at most once every
L{CHECK_EVERY} seconds (walking the interfaces costs about a millisecond),
and whenever L{RenewingServerContext.reload} is called; there is no timer to
start or stop.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from regproxy.tls.context import (
    CertificateFiles,
    CertificateSet,
    ReloadingServerContext,
)
from regproxy.tls.hostnames import SubjectNames
from regproxy.tls.localca import LocalCA, ensureLocalCA
from regproxy.tls.pem import CertificateError

#: Seconds between two looks at this machine's names.
CHECK_EVERY = 60.0


@implementer(IOpenSSLServerConnectionCreator)
class RenewingServerContext:
    """
    A L{ReloadingServerContext} over the local CA's server certificate
    (and a C{certs=} directory, if any), which keeps that certificate
    matching L{names} and unexpired.

    @ivar localCA: What the last check found or made.
    """

    _log = Logger()

    def __init__(
        self,
        stateDir: str,
        names: Callable[[], SubjectNames],
        clock: IReactorTime,
        directory: str | None = None,
        checkEvery: float = CHECK_EVERY,
    ) -> None:
        """
        @raise CertificateError: When the state directory cannot be used.
        """
        self._stateDir = stateDir
        self._names = names
        self._clock = clock
        self._checkEvery = checkEvery
        self.localCA: LocalCA = ensureLocalCA(stateDir, names(), self._now())
        paths = self.localCA.paths
        self._inner = ReloadingServerContext(
            CertificateFiles(paths.server, paths.serverKey, None, directory),
            clock=clock,
        )
        self._due = clock.seconds() + checkEvery

    @property
    def certificates(self) -> CertificateSet:
        return self._inner.certificates

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(
            self._clock.seconds(), datetime.timezone.utc
        )

    def renewIfNeeded(self) -> bool:
        """
        Issue a new server certificate if the names changed or it expires
        soon; a failure is logged and the current certificate kept.

        @return: C{True} when a new one was issued.
        """
        try:
            return self._renew()
        except CertificateError as e:
            self._log.warn("TLS: keeping the current certificate: {reason}", reason=e)
            return False

    def _renew(self) -> bool:
        self._due = self._clock.seconds() + self._checkEvery
        found = ensureLocalCA(self._stateDir, self._names(), self._now())
        self.localCA = found
        if found.newCA is not None:
            self._log.warn(
                "TLS: made a new local CA ({why}), SHA-256 {fingerprint}: clients "
                "must fetch /_ca.crt again and install it",
                why=found.newCA,
                fingerprint=found.ca.fingerprint,
            )
        if found.newServer is None:
            return False
        self._log.info(
            "TLS: new server certificate ({why}), names {names}, expires "
            "{expires}, signed by the local CA clients already trust",
            why=found.newServer,
            names=", ".join(found.server.names.describe()),
            expires=f"{found.server.notAfter:%Y-%m-%d %H:%M} UTC",
        )
        return True

    def reload(self) -> bool:
        """
        Look at the names now and re-read the certificate files.

        @return: C{True} when new certificates are served from now on.
        @raise CertificateError: A new certificate is needed but cannot be
            made, or the files cannot be used; the current ones stay.
        """
        self._renew()
        return self._inner.reload()

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        if self._clock.seconds() >= self._due:
            self.renewIfNeeded()
        return self._inner.serverConnectionForTLS(tlsProtocol)
