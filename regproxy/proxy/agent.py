# -*- test-case-name: tests.integration.test_forward_htpasswd_tls -*-
"""
The HTTP client that reaches the upstream registry: pooled, kept alive,
verifying TLS against the system's roots or a CA file we are given.
"""

from __future__ import annotations

from http.cookiejar import CookieJar
from typing import TYPE_CHECKING

from OpenSSL import crypto
from twisted.internet import ssl
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)

from regproxy.config import Config
from regproxy.tls.pem import CertificateError, loadCertificates

if TYPE_CHECKING:
    # What twisted.internet.ssl's trust-root helpers return; Twisted
    # defines it only in this private module.
    from twisted.internet._sslverify import IOpenSSLTrustRoot

# Clients pull layers in parallel (docker: 3 at once per image, more with
# several pulls); keep enough idle connections to reuse them.
MAX_PERSISTENT_PER_HOST = 32
IDLE_CONNECTION_SECONDS = 90


def loadTrustRoot(path: str) -> IOpenSSLTrustRoot:
    """
    Trust the certificates in the PEM file at C{path} (one or several).
    """
    try:
        certificates = loadCertificates(path, "CA file")
    except CertificateError as e:
        raise ValueError(f"--upstream-ca: {e}") from None
    return ssl.trustRootFromCertificates(
        [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in certificates]
    )


class NoCookies(CookieJar):
    """
    A cookie jar that keeps nothing: one client's upstream cookie must never
    be replayed for another.
    """

    def set_cookie(self, cookie) -> None:
        pass

    def extract_cookies(self, response, request) -> None:
        pass


class _QuietClientFactory(_HTTP11ClientFactory):
    # One "Starting factory" line per upstream connection drowns the
    # one-line-per-request log.
    noisy = False


def makeUpstreamAgent(reactor, config: Config) -> Agent:
    """
    An L{Agent} for the upstream, with a persistent connection pool.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietClientFactory
    pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
    pool.cachedConnectionTimeout = IDLE_CONNECTION_SECONDS
    if config.upstream_ca:
        policy = BrowserLikePolicyForHTTPS(trustRoot=loadTrustRoot(config.upstream_ca))
    else:
        policy = BrowserLikePolicyForHTTPS()
    return Agent(
        reactor,
        contextFactory=policy,
        connectTimeout=config.connect_timeout,
        pool=pool,
    )
