# -*- test-case-name: tests.integration.test_forward_broker -*-
"""
The same pushes and pulls as the other forwarding tests, with regproxy as
a broker (its default): clients get regproxy's own tokens, and regproxy
acts for them towards the open, Basic and token-auth upstreams with their
own credentials.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from .forwarding import ForwardingTests


class BrokerOpenRegistryTests(ForwardingTests, TestCase):
    mode = "open"
    auth = "broker"


class BrokerHtpasswdTLSRegistryTests(ForwardingTests, TestCase):
    mode = "htpasswd-tls"
    auth = "broker"


class BrokerTokenRegistryTests(ForwardingTests, TestCase):
    mode = "token"
    auth = "broker"
