"""
Tests for L{regproxy.tls.endpoint}: the C{regproxy-tls:...} description, found
through Twisted's plugin system as C{serverFromString} and C{strports} do.
"""

from __future__ import annotations

import os
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.application import strports
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from regproxy.tls.certificates import loadCertifiedKey
from regproxy.tls.dualstack import DualStackServerEndpoint
from regproxy.tls.endpoint import (
    EndpointError,
    TLSDefaults,
    TLSListenerSpec,
    TLSServerEndpoint,
    makeEndpoint,
    parseArguments,
    serverEndpoint,
)
from regproxy.tls.hostnames import SubjectNames
from regproxy.tls.localca import SelfSignedPaths
from regproxy.tls.renewal import RenewingServerContext
from regproxy.tls.selfsigned import generateSelfSigned

labels = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12
)
hostNames = st.lists(labels, min_size=1, max_size=3).map(".".join)
# Anything a file name may hold, including the characters endpoint
# descriptions treat specially (":", "=", "\\").
fileNames = st.text(
    st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]),
    min_size=1,
    max_size=30,
).filter(lambda n: n not in (".", ".."))


def memoryReactor() -> MemoryReactorClock:
    """
    A reactor that binds nothing, its clock set to now: certificates are
    made for the time the reactor says.
    """
    reactor = MemoryReactorClock()
    reactor.advance(time.time())
    return reactor


def writeBundle(directory: str, names: list[str]) -> str:
    os.makedirs(directory, exist_ok=True)
    made = generateSelfSigned(SubjectNames(names, []))
    path = os.path.join(directory, "bundle.pem")
    with open(path, "wb") as f:
        f.write(made.certificatePEM() + made.keyPEM())
    return path


class ParseTests(SynchronousTestCase):
    def test_portOnly(self) -> None:
        self.assertEqual(parseArguments(["5000"], {}), TLSListenerSpec(5000))

    def test_everything(self) -> None:
        spec = parseArguments(
            ["5000"],
            {
                "interface": "::1",
                "backlog": "10",
                "cert": "/c",
                "key": "/k",
                "chain": "/ch",
                "certs": "/d",
                "stateDir": "/s",
                "name": "a.example,10.0.0.1",
            },
        )
        self.assertEqual(
            spec,
            TLSListenerSpec(
                5000,
                "::1",
                10,
                "/c",
                "/k",
                "/ch",
                "/d",
                "/s",
                ("a.example", "10.0.0.1"),
            ),
        )

    def assertRefused(self, fragment: str, args, kwargs) -> None:
        e = self.assertRaises(EndpointError, parseArguments, args, kwargs)
        self.assertIn(fragment, str(e))
        self.assertTrue(str(e).startswith("regproxy-tls: "))

    def test_errors(self) -> None:
        """
        Each mistake gets a message that says what to write instead.
        """
        self.assertRefused("a port is needed", [], {})
        self.assertRefused("port must be a number", ["https"], {})
        self.assertRefused("port must be a number", ["70000"], {})
        self.assertRefused(
            "unknown argument 'certificate'", ["1"], {"certificate": "x"}
        )
        self.assertRefused(
            "interface must be an IP address", ["1"], {"interface": "eth0"}
        )
        self.assertRefused("key= and chain= need cert=", ["1"], {"key": "/k"})
        self.assertRefused("one port only", ["1", "2"], {})
        self.assertRefused("'\\:'", ["1", "2"], {})
        self.assertRefused(
            "neither a host name nor an IP address", ["1"], {"name": "a b!"}
        )

    @given(
        st.lists(st.text(max_size=20), max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "port",
                    "interface",
                    "backlog",
                    "cert",
                    "key",
                    "chain",
                    "certs",
                    "stateDir",
                    "name",
                    "other",
                ]
            ),
            st.text(max_size=40),
        ),
    )
    @settings(max_examples=300, deadline=None)
    def test_neverCrashes(self, args: list[str], kwargs: dict[str, str]) -> None:
        """
        Any arguments give a spec or an L{EndpointError} with one line.
        """
        try:
            parseArguments(args, kwargs)
        except EndpointError as e:
            self.assertNotIn("\n", str(e))


class ServerFromStringTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.bundle = writeBundle(self.dir, ["given.example"])
        self.reactor = memoryReactor()

    def test_pluginFound(self) -> None:
        """
        C{serverFromString} knows C{regproxy-tls}; with no certificate given
        it has the local CA in the state directory sign one naming the
        C{name} values.
        """
        stateDir = os.path.join(self.dir, "state")
        endpoint = serverFromString(
            self.reactor,
            f"regproxy-tls:5000:interface=127.0.0.1:stateDir={stateDir}:name=reg.example",
        )
        verifyObject(IStreamServerEndpoint, endpoint)
        paths = SelfSignedPaths.inStateDir(stateDir)
        names = loadCertifiedKey(paths.server, paths.serverKey).names
        self.assertIn("reg.example", names.dnsNames)
        self.assertEqual(endpoint.creator.certificates.default.names, names)

    def test_listen(self) -> None:
        """
        Listening binds the TCP port and interface with TLS wrapped around
        the factory, and logs the CA's fingerprint and the client
        instructions.
        """
        stateDir = os.path.join(self.dir, "state")
        endpoint = serverFromString(
            self.reactor,
            f"regproxy-tls:5000:interface=127.0.0.1:stateDir={stateDir}:name=",
        )
        with capturedLogs() as events:
            self.successResultOf(endpoint.listen(Factory.forProtocol(Protocol)))
        [(port, factory, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, backlog, interface), (5000, 50, "127.0.0.1"))
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        [event] = events
        fingerprint = endpoint.creator.localCA.ca.fingerprint
        self.assertEqual(event["fingerprint"], fingerprint)
        self.assertNotEqual(
            fingerprint, endpoint.creator.certificates.default.fingerprint
        )
        self.assertIn("/etc/docker/certs.d/", event["setup"])
        self.assertIn(
            f"the fingerprint it prints must be {fingerprint}", event["setup"]
        )

    def test_ipv6Interface(self) -> None:
        serverFromString(
            self.reactor, f"regproxy-tls:5000:interface=\\:\\:1:cert={self.bundle}"
        ).listen(Factory.forProtocol(Protocol))
        self.assertEqual(self.reactor.tcpServers[0][3], "::1")

    def test_strports(self) -> None:
        """
        C{strports.service} (what C{--listen} uses) accepts it too.
        """
        service = strports.service(
            f"regproxy-tls:5001:cert={self.bundle}",
            Factory.forProtocol(Protocol),
            reactor=self.reactor,
        )
        service.privilegedStartService()
        self.assertEqual(self.reactor.tcpServers[0][0], 5001)

    def test_givenCertificate(self) -> None:
        endpoint = serverFromString(
            self.reactor, f"regproxy-tls:5000:cert={self.bundle}"
        )
        self.assertEqual(
            endpoint.creator.certificates.default.names.dnsNames, ("given.example",)
        )

    def test_badCertificate(self) -> None:
        """
        A certificate that cannot be used stops start-up with one line naming
        the listener and the file.
        """
        e = self.assertRaises(
            EndpointError,
            serverFromString,
            self.reactor,
            f"regproxy-tls:5000:cert={self.dir}/missing.pem",
        )
        self.assertEqual(
            str(e),
            f"regproxy-tls:5000: cannot read certificate {self.dir}/missing.pem: "
            "No such file or directory",
        )

    def test_standaloneIgnoresEnvironment(self) -> None:
        """
        Found by the plugin system alone, the endpoint does not read the
        daemon's environment: its defaults are the declared ones.
        """
        stateDir = os.path.join(self.dir, "from-env")
        self.patch(os, "environ", {**os.environ, "REGPROXY_STATE_DIR": stateDir})
        self.patch(TLSDefaults, "standalone", classmethod(lambda cls: cls(self.dir)))
        serverFromString(self.reactor, "regproxy-tls:5000:name=")
        self.assertFalse(os.path.exists(stateDir))
        self.assertTrue(os.path.exists(SelfSignedPaths.inStateDir(self.dir).ca))

    def test_inner(self) -> None:
        """
        The TLS wraps an inner endpoint: both families with no interface,
        else the family of the address given.
        """
        for interface, kind in (
            ("", DualStackServerEndpoint),
            ("127.0.0.1", TCP4ServerEndpoint),
            ("\\:\\:1", TCP6ServerEndpoint),
        ):
            description = f"regproxy-tls:5000:cert={self.bundle}"
            if interface:
                description += f":interface={interface}"
            endpoint = serverFromString(self.reactor, description)
            self.assertIsInstance(endpoint.inner, kind)

    @given(st.text(max_size=60))
    @settings(max_examples=100, deadline=None)
    def test_anyDescription(self, text: str) -> None:
        """
        Whatever follows C{regproxy-tls:}, C{serverFromString} gives an
        endpoint or a L{ValueError} (Twisted's own for broken quoting, ours
        otherwise), with a one-line message.
        """
        stateDir = os.path.join(self.dir, "state").replace(":", "\\:")
        description = f"regproxy-tls:{text}:stateDir={stateDir}:name="
        try:
            endpoint = serverFromString(self.reactor, description)
        except ValueError as e:
            self.assertNotIn("\n", str(e))
        else:
            self.assertIsInstance(endpoint, TLSServerEndpoint)

    @given(
        port=st.integers(0, 65535),
        interface=st.one_of(st.just(""), st.ip_addresses().map(str)),
        backlog=st.integers(1, 1000),
        fileName=fileNames,
        stateDir=st.one_of(st.none(), fileNames),
        names=st.one_of(
            st.none(),
            st.lists(st.one_of(hostNames, st.ip_addresses().map(str)), max_size=3),
        ),
    )
    @settings(max_examples=100, deadline=None)
    def test_roundTrip(
        self, port, interface, backlog, fileName, stateDir, names
    ) -> None:
        """
        L{TLSListenerSpec.describe} writes a description that
        C{serverFromString} reads back to the same value, whatever characters
        the paths and names hold.
        """
        link = os.path.join(self.dir, fileName)
        if not os.path.lexists(link):
            os.symlink(self.bundle, link)
        spec = TLSListenerSpec(
            port,
            interface,
            backlog,
            cert=link,
            stateDir=stateDir,
            names=None if names is None else tuple(names),
        )
        endpoint = serverFromString(self.reactor, spec.describe())
        self.assertIsInstance(endpoint, TLSServerEndpoint)
        self.assertEqual(endpoint.spec, spec)


class ServerEndpointTests(SynchronousTestCase):
    def test_daemonSettings(self) -> None:
        """
        The daemon's C{--state-dir} and C{--tls-name} reach the endpoint as
        values, not through the description or the environment.
        """
        stateDir = os.path.abspath(self.mktemp())
        endpoint = serverEndpoint(
            memoryReactor(),
            "regproxy-tls:5000",
            TLSDefaults(stateDir, ("a.example", "::1")),
        )
        assert isinstance(endpoint, TLSServerEndpoint)
        assert isinstance(endpoint.creator, RenewingServerContext)
        self.assertIsNone(endpoint.spec.names)
        names = endpoint.creator.certificates.default.names
        self.assertIn("a.example", names.dnsNames)
        self.assertEqual(endpoint.creator.localCA.paths.directory, stateDir + "/tls")

    def test_ownSettingsWin(self) -> None:
        own = os.path.abspath(self.mktemp())
        endpoint = serverEndpoint(
            memoryReactor(),
            f"regproxy-tls:5000:stateDir={own}:name=b.example",
            TLSDefaults(os.path.abspath(self.mktemp()), ("a.example",)),
        )
        assert isinstance(endpoint, TLSServerEndpoint)
        names = endpoint.creator.certificates.default.names
        self.assertIn("b.example", names.dnsNames)
        self.assertNotIn("a.example", names.dnsNames)
        self.assertTrue(os.path.exists(SelfSignedPaths.inStateDir(own).ca))

    def test_otherEndpoints(self) -> None:
        """
        Other descriptions are Twisted's, as C{serverFromString} reads them.
        """
        endpoint = serverEndpoint(memoryReactor(), "tcp:80", TLSDefaults(self.mktemp()))
        self.assertIsInstance(endpoint, TCP4ServerEndpoint)
        self.assertRaises(
            ValueError,
            serverEndpoint,
            memoryReactor(),
            "nosuchkind:80",
            TLSDefaults(self.mktemp()),
        )

    def test_reload(self) -> None:
        """
        C{reload} re-reads given certificate files at once.
        """
        directory = os.path.abspath(self.mktemp())
        bundle = writeBundle(directory, ["first.example"])
        endpoint = serverEndpoint(
            memoryReactor(), f"regproxy-tls:5000:cert={bundle}", TLSDefaults(directory)
        )
        writeBundle(directory, ["second.example"])
        assert isinstance(endpoint, TLSServerEndpoint)
        self.assertTrue(endpoint.reload())
        self.assertEqual(
            endpoint.creator.certificates.default.names.dnsNames, ("second.example",)
        )


class HangupTests(SynchronousTestCase):
    """
    What SIGHUP's TLS part (L{regproxy.daemon.registerTLSReload}) does with
    L{TLSServerEndpoint.reload}.
    """

    def setUp(self) -> None:
        from regproxy.app import Reloads
        from regproxy.daemon import registerTLSReload

        self.names = SubjectNames(["box.local"], [])
        self.endpoint = makeEndpoint(
            memoryReactor(),
            TLSListenerSpec(5000),
            TLSDefaults(os.path.abspath(self.mktemp())),
            names=lambda extra: self.names,
        )
        self.reloads = Reloads()
        registerTLSReload(self.reloads, self.endpoint)

    def said(self) -> list[str]:
        with capturedLogs() as events:
            self.reloads.reloadAll()
        return [
            e["what"] if "what" in e else e["log_format"] for e in events if "name" in e
        ]

    def test_namesChanged(self) -> None:
        self.assertEqual(self.said(), ["nothing new installed"])
        self.names = SubjectNames(["box.local", "new.local"], [])
        self.assertEqual(self.said(), ["new certificate installed"])
        self.assertIn(
            "new.local", self.endpoint.creator.certificates.default.names.dnsNames
        )

    def test_unusable(self) -> None:
        """
        A new server certificate that cannot be written (its key's path is
        taken by a directory) keeps the certificate in use, and SIGHUP's
        line says it kept the previous one.
        """
        assert isinstance(self.endpoint.creator, RenewingServerContext)
        paths = self.endpoint.creator.localCA.paths
        os.unlink(paths.serverKey)
        os.mkdir(paths.serverKey)
        self.names = SubjectNames(["other.local"], [])
        before = self.endpoint.creator.certificates.default.fingerprint
        [line] = self.said()
        self.assertIn("kept the previous", line)
        self.assertEqual(self.endpoint.creator.certificates.default.fingerprint, before)
