"""
Tests for L{regproxy.config}: where each setting comes from, and what a
user is told when one is wrong.
"""

import os
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from regproxy import config as configModule
from regproxy.config import (
    DEFAULT_UPSTREAM,
    Config,
    ConfigError,
    loadConfig,
    optionName,
    parseHTTPURL,
    parsePositiveFloat,
    parseUpstreamURL,
)
from regproxy.testing.strategies import httpURLs, tomlValues, toTOML

_examples = settings(max_examples=200, deadline=None)

_REPO = FilePath(__file__).parent().parent().parent()


class ConfigTestCase(SynchronousTestCase):
    def writeConfig(self, text: str) -> str:
        """
        Write a TOML configuration file and return its path.
        """
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def assertOneLineError(self, error: ConfigError, option: str) -> None:
        """
        C{error}'s message is one line that names C{option}.
        """
        message = str(error)
        self.assertIn(option, message)
        self.assertNotIn("\n", message)
        self.assertNotIn("Traceback", message)


class DefaultsTests(ConfigTestCase):
    """
    With nothing given, regproxy runs as the LAN device of the design.
    """

    def test_defaults(self) -> None:
        """
        No flags, no environment and no file: listen on tcp:80 and TLS on 5000, forward
        to balenaCloud's registry, taking the public URL from each request.
        """
        config = loadConfig({}, {})
        self.assertEqual(config.listen, ("regproxy-tcp:80", "regproxy-tls:5000"))
        self.assertEqual(config.upstream, "https://registry2.balena-cloud.com")
        self.assertEqual(config.upstream, DEFAULT_UPSTREAM)
        self.assertIsNone(config.public_url)
        self.assertEqual(config.connect_timeout, 10.0)
        self.assertEqual(config.response_timeout, 60.0)
        self.assertTrue(config.state_dir)

    def test_names(self) -> None:
        """
        A field's option, environment variable and file key are named after
        it.
        """
        fields = {field.name: field for field, _ in configModule.settings()}
        for name in ["listen", "upstream", "public_url", "state_dir"]:
            self.assertIn(name, fields)
        self.assertEqual(optionName(fields["public_url"]), "public-url")
        self.assertEqual(
            configModule.environmentName(fields["public_url"]), "REGPROXY_PUBLIC_URL"
        )


class PrecedenceTests(ConfigTestCase):
    """
    Flags win over the environment, which wins over the file, which wins over
    the defaults; for every kind of setting.
    """

    def assertPrecedence(
        self,
        name: str,
        fileValue: str,
        envValue: str,
        flagValue: Any,
        expected: tuple[Any, Any, Any],
    ) -> None:
        """
        Load with all three sources, then without the flag, then with the
        file alone, then with nothing.

        @param fileValue: A TOML value expression.
        @param expected: The value from the flag, the environment and the
            file, in that order.
        """
        key = name.replace("_", "-")
        envName = "REGPROXY_" + name.upper()
        path = self.writeConfig(f"{key} = {fileValue}\n")
        environ = {envName: envValue}
        default = getattr(Config(), name)
        self.assertEqual(
            getattr(loadConfig({name: flagValue}, environ, path), name), expected[0]
        )
        self.assertEqual(getattr(loadConfig({}, environ, path), name), expected[1])
        self.assertEqual(getattr(loadConfig({}, {}, path), name), expected[2])
        self.assertEqual(getattr(loadConfig({}, {}), name), default)
        self.assertNotIn(default, expected)

    def test_text(self) -> None:
        """
        A text setting (C{--state-dir}).
        """
        self.assertPrecedence(
            "state_dir",
            '"/srv/file"',
            "/srv/env",
            "/srv/flag",
            ("/srv/flag", "/srv/env", "/srv/file"),
        )

    def test_url(self) -> None:
        """
        A URL setting (C{--upstream}), its trailing slash dropped from every
        source.
        """
        self.assertPrecedence(
            "upstream",
            '"http://file.example:5000/"',
            "https://env.example/",
            "http://127.0.0.1:5000/",
            (
                "http://127.0.0.1:5000",
                "https://env.example",
                "http://file.example:5000",
            ),
        )

    def test_optionalURL(self) -> None:
        """
        An optional URL setting (C{--public-url}).
        """
        self.assertPrecedence(
            "public_url",
            '"https://file.example"',
            "https://env.example:5000",
            "http://10.0.0.2",
            ("http://10.0.0.2", "https://env.example:5000", "https://file.example"),
        )

    def test_float(self) -> None:
        """
        A number of seconds (C{--connect-timeout}), from text or a TOML
        number.
        """
        self.assertPrecedence("connect_timeout", "2.5", "3", "0.25", (0.25, 3.0, 2.5))

    def test_floatFromTOMLInteger(self) -> None:
        """
        A TOML integer is a number of seconds too.
        """
        path = self.writeConfig("response-timeout = 120\n")
        self.assertEqual(loadConfig({}, {}, path).response_timeout, 120.0)

    def test_repeatable(self) -> None:
        """
        A repeatable setting (C{--listen}) is replaced whole by the source
        that wins, not merged.
        """
        self.assertPrecedence(
            "listen",
            '["tcp:1001", "tcp:1002"]',
            "tcp:2001",
            ["tcp:3001", "tcp:3002", "tcp:3003"],
            (
                ("tcp:3001", "tcp:3002", "tcp:3003"),
                ("tcp:2001",),
                ("tcp:1001", "tcp:1002"),
            ),
        )

    def test_switches(self) -> None:
        """
        Switches, if there are any, read true and false from every source.
        """
        switches = [f.name for f, spec in configModule.settings() if spec.switch]
        if not switches:
            raise self.skipTest("Config declares no switch")
        for name in switches:
            key = name.replace("_", "-")
            envName = "REGPROXY_" + name.upper()
            path = self.writeConfig(f"{key} = false\n")
            self.assertIs(
                getattr(loadConfig({name: True}, {envName: "no"}, path), name), True
            )
            self.assertIs(getattr(loadConfig({}, {envName: "yes"}, path), name), True)
            self.assertIs(getattr(loadConfig({}, {}, path), name), False)

    def test_dashOrUnderscore(self) -> None:
        """
        File keys may be written with dashes, as the options are, or with
        underscores.
        """
        dashed = self.writeConfig('public-url = "https://a.example"\n')
        underscored = self.writeConfig('public_url = "https://a.example"\n')
        self.assertEqual(loadConfig({}, {}, dashed).public_url, "https://a.example")
        self.assertEqual(
            loadConfig({}, {}, underscored).public_url, "https://a.example"
        )

    def test_environmentUnrelated(self) -> None:
        """
        Environment variables without the C{REGPROXY_} prefix are ignored.
        """
        config = loadConfig({}, {"UPSTREAM": "ftp://x", "LISTEN": "nonsense"})
        self.assertEqual(config, loadConfig({}, {}))


class ConfigFileTests(ConfigTestCase):
    """
    Naming and reading the TOML file.
    """

    def test_environmentNamesFile(self) -> None:
        """
        C{REGPROXY_CONFIG} names the file when C{--config} is not given.
        """
        path = self.writeConfig('upstream = "http://from-file.example"\n')
        config = loadConfig({}, {"REGPROXY_CONFIG": path})
        self.assertEqual(config.upstream, "http://from-file.example")

    def test_flagNamesFile(self) -> None:
        """
        C{--config} wins over C{REGPROXY_CONFIG}.
        """
        fromEnv = self.writeConfig('upstream = "http://env-file.example"\n')
        fromFlag = self.writeConfig('upstream = "http://flag-file.example"\n')
        config = loadConfig({}, {"REGPROXY_CONFIG": fromEnv}, fromFlag)
        self.assertEqual(config.upstream, "http://flag-file.example")

    def test_emptyEnvironmentNamesNoFile(self) -> None:
        """
        An empty C{REGPROXY_CONFIG} means no file.
        """
        self.assertEqual(loadConfig({}, {"REGPROXY_CONFIG": ""}), loadConfig({}, {}))

    def test_unknownKey(self) -> None:
        """
        A misspelt key is refused with its name, not ignored.
        """
        path = self.writeConfig('upstrem = "http://a.example"\n')
        error = self.assertRaises(ConfigError, loadConfig, {}, {}, path)
        self.assertOneLineError(error, "--config")
        self.assertIn("upstrem", str(error))

    def test_table(self) -> None:
        """
        A table is an unknown key too: settings live at the top level.
        """
        path = self.writeConfig('[server]\nupstream = "http://a.example"\n')
        error = self.assertRaises(ConfigError, loadConfig, {}, {}, path)
        self.assertOneLineError(error, "--config")
        self.assertIn("server", str(error))

    def test_missingFile(self) -> None:
        """
        A file that does not exist is reported with its path.
        """
        path = self.mktemp()
        error = self.assertRaises(ConfigError, loadConfig, {}, {}, path)
        self.assertOneLineError(error, "--config")
        self.assertIn(path, str(error))

    def test_directory(self) -> None:
        """
        A directory given as the file is reported, not a traceback.
        """
        path = self.mktemp()
        os.mkdir(path)
        error = self.assertRaises(ConfigError, loadConfig, {}, {}, path)
        self.assertOneLineError(error, "--config")
        self.assertIn(path, str(error))

    def test_missingFileFromEnvironment(self) -> None:
        """
        A missing file named by C{REGPROXY_CONFIG} is reported the same way.
        """
        path = self.mktemp()
        error = self.assertRaises(
            ConfigError, loadConfig, {}, {"REGPROXY_CONFIG": path}
        )
        self.assertOneLineError(error, "--config")

    def test_invalidTOML(self) -> None:
        """
        A file that is not TOML is reported with its path and where it went
        wrong.
        """
        path = self.writeConfig('upstream = "http://a.example"\nlisten = \n')
        error = self.assertRaises(ConfigError, loadConfig, {}, {}, path)
        self.assertOneLineError(error, "--config")
        self.assertIn(path, str(error))
        self.assertIn("line 2", str(error))

    def test_notUTF8(self) -> None:
        """
        A file in another encoding is reported, not a traceback.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write('state-dir = "/srv/caf\u00e9"\n'.encode("latin-1"))
        error = self.assertRaises(ConfigError, loadConfig, {}, {}, path)
        self.assertOneLineError(error, "--config")

    def test_example(self) -> None:
        """
        The commented example in C{etc/regproxy.toml} loads as it is.
        """
        example = _REPO.descendant(["etc", "regproxy.toml"])
        config = loadConfig({}, {}, example.path)
        self.assertIsInstance(config, Config)


class RepeatableTests(ConfigTestCase):
    """
    Lists of values (C{--listen}, C{--tls-name}) from the environment and the
    file.
    """

    def test_environmentComma(self) -> None:
        """
        Commas separate values in the environment.
        """
        config = loadConfig({}, {"REGPROXY_LISTEN": "tcp:8080,tcp:8081"})
        self.assertEqual(config.listen, ("tcp:8080", "tcp:8081"))

    def test_environmentSpace(self) -> None:
        """
        So do spaces, and both together.
        """
        self.assertEqual(
            loadConfig({}, {"REGPROXY_LISTEN": "tcp:8080 tcp:8081"}).listen,
            ("tcp:8080", "tcp:8081"),
        )
        self.assertEqual(
            loadConfig({}, {"REGPROXY_TLS_NAME": " a.local,  10.0.0.2 ,b "}).tls_name,
            ("a.local", "10.0.0.2", "b"),
        )

    def test_fileList(self) -> None:
        """
        A TOML list gives one value per item.
        """
        path = self.writeConfig(
            'listen = ["tcp:8080:interface=127.0.0.1", "tcp:8081"]\n'
        )
        self.assertEqual(
            loadConfig({}, {}, path).listen,
            ("tcp:8080:interface=127.0.0.1", "tcp:8081"),
        )

    def test_fileString(self) -> None:
        """
        A TOML string is split like the environment's.
        """
        path = self.writeConfig('tls-name = "a.local, b.local"\n')
        self.assertEqual(loadConfig({}, {}, path).tls_name, ("a.local", "b.local"))

    def test_badItem(self) -> None:
        """
        One bad item in a list is reported with the option's name.
        """
        path = self.writeConfig('listen = ["tcp:8080", 8081]\n')
        error = self.assertRaises(ConfigError, loadConfig, {}, {}, path)
        self.assertOneLineError(error, "--listen")

    def test_notAList(self) -> None:
        """
        A TOML number where a list is expected is reported.
        """
        path = self.writeConfig("listen = 80\n")
        error = self.assertRaises(ConfigError, loadConfig, {}, {}, path)
        self.assertOneLineError(error, "--listen")

    def test_emptyListen(self) -> None:
        """
        An empty listener list is refused: a daemon that listens nowhere
        should not start and look healthy.
        """
        for environ, path in [
            ({"REGPROXY_LISTEN": ""}, None),
            ({}, self.writeConfig("listen = []\n")),
        ]:
            error = self.assertRaises(ConfigError, loadConfig, {}, environ, path)
            self.assertOneLineError(error, "--listen")


class BadValueTests(ConfigTestCase):
    """
    A bad value gives one line naming the option, from every source.
    """

    def assertRefusedEverywhere(
        self, name: str, bad: str, badTOML: str, option: str
    ) -> None:
        envName = "REGPROXY_" + name.upper()
        key = name.replace("_", "-")
        cases = [
            ({name: bad}, {}, None, "flag"),
            ({}, {envName: bad}, None, envName),
            ({}, {}, self.writeConfig(f"{key} = {badTOML}\n"), "config file"),
        ]
        for flags, environ, path, source in cases:
            error = self.assertRaises(ConfigError, loadConfig, flags, environ, path)
            self.assertOneLineError(error, option)
            self.assertIn(source, str(error))

    def test_upstreamWithAPIRoot(self) -> None:
        """
        An upstream given with its C{/v2/} (every request would go to
        C{/v2/v2/...}, and every pull fail with "manifest unknown") is
        refused at start-up, saying what to give instead.
        """
        self.assertRefusedEverywhere(
            "upstream",
            "http://registry.example/v2/",
            '"http://registry.example/v2/"',
            "--upstream",
        )
        for given_, base in [
            ("http://registry.example/v2/", "'http://registry.example'"),
            ("https://v2.example:5000/v2", "'https://v2.example:5000'"),
            (
                "https://registry.example/mirror/v2/",
                "'https://registry.example/mirror'",
            ),
        ]:
            error = self.assertRaises(
                ConfigError, loadConfig, {"upstream": given_}, {}, None
            )
            self.assertIn("without /v2", str(error))
            self.assertIn(base, str(error))

    def test_upstreamPrefixKept(self) -> None:
        """
        Any other path is the prefix the registry is served under, kept.
        """
        config = loadConfig({"upstream": "https://registry.example/mirror/"}, {}, None)
        self.assertEqual(config.upstream, "https://registry.example/mirror")

    def test_upstreamScheme(self) -> None:
        """
        An upstream that is not http or https.
        """
        self.assertRefusedEverywhere(
            "upstream",
            "ftp://registry.example",
            '"ftp://registry.example"',
            "--upstream",
        )

    def test_upstreamNoHost(self) -> None:
        """
        An upstream without a host.
        """
        self.assertRefusedEverywhere("upstream", "https://", '"https://"', "--upstream")

    def test_upstreamNotURL(self) -> None:
        """
        An upstream that is a bare host name, as users often type.
        """
        self.assertRefusedEverywhere(
            "upstream",
            "registry.example:5000",
            '"registry.example:5000"',
            "--upstream",
        )

    def test_upstreamBadPort(self) -> None:
        """
        An upstream whose port is not a number.
        """
        self.assertRefusedEverywhere(
            "upstream",
            "http://registry.example:five",
            '"http://registry.example:five"',
            "--upstream",
        )

    def test_upstreamQuery(self) -> None:
        """
        An upstream with a query string.
        """
        self.assertRefusedEverywhere(
            "upstream",
            "https://r.example/?x=1",
            '"https://r.example/?x=1"',
            "--upstream",
        )

    def test_upstreamEmpty(self) -> None:
        """
        An empty upstream.
        """
        self.assertRefusedEverywhere("upstream", "", '""', "--upstream")

    def test_upstreamNumberInFile(self) -> None:
        """
        A TOML number where a URL is expected.
        """
        path = self.writeConfig("upstream = 5000\n")
        error = self.assertRaises(ConfigError, loadConfig, {}, {}, path)
        self.assertOneLineError(error, "--upstream")

    def test_publicURL(self) -> None:
        """
        A public URL that is not http or https.
        """
        self.assertRefusedEverywhere(
            "public_url", "proxy.local", '"proxy.local"', "--public-url"
        )

    def test_timeoutText(self) -> None:
        """
        A timeout that is not a number.
        """
        self.assertRefusedEverywhere(
            "connect_timeout", "soon", '"soon"', "--connect-timeout"
        )

    def test_timeoutZero(self) -> None:
        """
        A timeout of zero or less.
        """
        self.assertRefusedEverywhere("connect_timeout", "0", "0", "--connect-timeout")
        self.assertRefusedEverywhere(
            "response_timeout", "-1", "-1.5", "--response-timeout"
        )

    def test_timeoutNotFinite(self) -> None:
        """
        Infinite and NaN timeouts.
        """
        self.assertRefusedEverywhere(
            "connect_timeout", "inf", "inf", "--connect-timeout"
        )
        self.assertRefusedEverywhere(
            "connect_timeout", "nan", "nan", "--connect-timeout"
        )

    def test_timeoutBoolInFile(self) -> None:
        """
        A TOML boolean is not a number of seconds.
        """
        path = self.writeConfig("connect-timeout = true\n")
        error = self.assertRaises(ConfigError, loadConfig, {}, {}, path)
        self.assertOneLineError(error, "--connect-timeout")

    def test_timeoutHugeIntegerInFile(self) -> None:
        """
        A TOML integer too large for a float is refused like any bad
        number (Python's TOML reader does not bound integers).
        """
        path = self.writeConfig("connect-timeout = 1" + "0" * 400 + "\n")
        error = self.assertRaises(ConfigError, loadConfig, {}, {}, path)
        self.assertOneLineError(error, "--connect-timeout")

    def test_listen(self) -> None:
        """
        A listener that is not an endpoint description.
        """
        self.assertRefusedEverywhere("listen", "80", '["80"]', "--listen")


class SecretTests(ConfigTestCase):
    """
    Settings marked secret (the balena API key) never show their value.
    """

    def secrets(self) -> list[str]:
        names = [f.name for f, spec in configModule.settings() if spec.secret]
        if not names:
            raise self.skipTest("Config declares no secret setting")
        return names

    def test_notInRepr(self) -> None:
        """
        A secret is not in the configuration's repr, which ends up in logs.
        """
        for name in self.secrets():
            config = loadConfig({name: "s3cr3t-value-1234"}, {})
            self.assertEqual(getattr(config, name), "s3cr3t-value-1234")
            self.assertNotIn("s3cr3t-value-1234", repr(config))

    def test_aliasForAPIToken(self) -> None:
        """
        The API key is also read from C{API_TOKEN}, the name balena's tools
        use; C{REGPROXY_API_TOKEN} wins over it.
        """
        fields = {f.name for f, _ in configModule.settings()}
        if "api_token" not in fields:
            raise self.skipTest("Config declares no api_token")
        self.assertEqual(loadConfig({}, {"API_TOKEN": "a"}).api_token, "a")
        self.assertEqual(
            loadConfig({}, {"API_TOKEN": "a", "REGPROXY_API_TOKEN": "b"}).api_token,
            "b",
        )

    @_examples
    @given(
        st.data(),
        st.text(min_size=6).map(lambda text: "S3cr3t" + text + "S3cr3t"),
    )
    def test_notInErrors(self, data: st.DataObject, secret: str) -> None:
        """
        A secret in a value that is refused is not in the error message,
        whatever the source and shape of the value.
        """
        name = data.draw(st.sampled_from(self.secrets()))
        key = name.replace("_", "-")
        value = data.draw(
            st.sampled_from(
                [
                    [secret],
                    {"key": secret},
                    [[secret]],
                    secret,
                ]
            )
        )
        path = self.writeConfig(f"{key} = {toTOML(value)}\n")
        try:
            loadConfig({}, {}, path)
        except ConfigError as e:
            self.assertNotIn(secret, str(e))
            self.assertNotIn(repr(secret)[1:-1], str(e))


class ParserPropertyTests(ConfigTestCase):
    """
    The value parsers on generated and arbitrary input.
    """

    @_examples
    @given(httpURLs())
    def test_httpURLAccepted(self, url: str) -> None:
        """
        Any http or https URL with a host is accepted as written, less a
        trailing slash.
        """
        expected = url[:-1] if url.endswith("/") else url
        self.assertEqual(parseHTTPURL(url), expected)
        # What was accepted is accepted again unchanged.
        self.assertEqual(parseHTTPURL(expected), expected)

    @_examples
    @given(
        st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8),
        httpURLs(),
    )
    def test_otherSchemesRefused(self, scheme: str, url: str) -> None:
        """
        The same URLs with any other scheme are refused.
        """
        assume(scheme not in ("http", "https"))
        other = scheme + url[url.index(":") :]
        self.assertRaises(ValueError, parseHTTPURL, other)

    @_examples
    @given(httpURLs(), st.lists(st.sampled_from(["mirror", "v2", "x"]), max_size=3))
    def test_upstreamURL(self, url: str, more: list[str]) -> None:
        """
        An upstream URL is accepted as any http URL is, unless a segment of
        its path is C{v2}; then it is refused.
        """
        candidate = url.rstrip("/") + "".join("/" + segment for segment in more)
        segments = candidate.split("://", 1)[1].split("/")[1:]
        if "v2" in segments:
            self.assertRaises(ValueError, parseUpstreamURL, candidate)
        else:
            self.assertEqual(parseUpstreamURL(candidate), parseHTTPURL(candidate))

    def test_httpURLRefusedExamples(self) -> None:
        """
        URLs without a host, or not URLs at all, are refused.
        """
        for text in [
            "http://",
            "https:///v2/",
            "http:registry.example",
            "//registry.example",
            "registry.example",
            "/v2/",
            "http://registry.example:port",
            "https://registry.example#frag",
        ]:
            self.assertRaises(ValueError, parseHTTPURL, text)

    def test_httpURLRefusesWhitespace(self) -> None:
        """
        Spaces and line breaks are refused, not carried into every request
        (a value read from a file often ends in a newline).
        """
        for text in [
            "https://registry.example\n",
            "https://registry example",
            "http://a.example/\r\n",
        ]:
            self.assertRaises(ValueError, parseHTTPURL, text)

    def test_httpURLRefusesBadPort(self) -> None:
        """
        A port outside 1-65535 is refused.
        """
        for text in ["http://registry.example:0", "http://registry.example:99999"]:
            self.assertRaises(ValueError, parseHTTPURL, text)

    @_examples
    @given(st.one_of(st.text(), httpURLs().map(lambda u: u + "\x00")))
    def test_httpURLArbitrary(self, text: str) -> None:
        """
        Any text is accepted or refused with L{ValueError} whose message is
        one line; never another exception.
        """
        try:
            result = parseHTTPURL(text)
        except ValueError as e:
            self.assertNotIn("\n", str(e))
        else:
            self.assertIsInstance(result, str)

    @_examples
    @given(
        st.one_of(
            st.text(),
            st.floats(),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.booleans(),
            st.none(),
            tomlValues,
        )
    )
    def test_positiveFloatArbitrary(self, value: Any) -> None:
        """
        Any value the flags, the environment or a TOML file can give is a
        positive finite number or L{ValueError}.
        """
        try:
            result = parsePositiveFloat(value)
        except ValueError as e:
            self.assertNotIn("\n", str(e))
        else:
            self.assertIsInstance(result, float)
            self.assertTrue(0 < result < float("inf"))

    @_examples
    @given(st.floats(min_value=1e-6, max_value=1e9))
    def test_positiveFloatText(self, seconds: float) -> None:
        """
        A positive number written as text reads back as itself.
        """
        self.assertEqual(parsePositiveFloat(repr(seconds)), seconds)
        self.assertEqual(parsePositiveFloat(seconds), seconds)

    @_examples
    @given(
        st.sampled_from([field.name for field, _ in configModule.settings()]),
        tomlValues,
    )
    def test_fileValueArbitrary(self, name: str, value: Any) -> None:
        """
        Any TOML value for any setting gives a L{Config} or a one-line
        L{ConfigError} that names that setting's option.
        """
        path = self.writeConfig(f"{name.replace('_', '-')} = {toTOML(value)}\n")
        try:
            config = loadConfig({}, {}, path)
        except ConfigError as e:
            self.assertOneLineError(e, "--" + name.replace("_", "-"))
        else:
            self.assertIsInstance(config, Config)

    @_examples
    @given(
        st.sampled_from([field.name for field, _ in configModule.settings()]),
        st.text(st.characters(codec="utf-8", exclude_characters="\x00")),
    )
    def test_environmentValueArbitrary(self, name: str, value: str) -> None:
        """
        Any environment value for any setting gives a L{Config} or a
        one-line L{ConfigError} that names that setting's option.
        """
        try:
            config = loadConfig({}, {"REGPROXY_" + name.upper(): value})
        except ConfigError as e:
            self.assertOneLineError(e, "--" + name.replace("_", "-"))
        else:
            self.assertIsInstance(config, Config)
