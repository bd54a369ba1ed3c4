# -*- test-case-name: tests.integration.test_forward_open -*-
"""
regproxy in front of an open registry (no auth, plain HTTP): skopeo,
podman and a plain HTTP client push and pull through it.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from .forwarding import ForwardingTests


class OpenRegistryForwardingTests(ForwardingTests, TestCase):
    mode = "open"
