# -*- test-case-name: tests.integration -*-
"""
Integration tests: a real distribution registry, real clients (skopeo,
podman) and regproxy in between, all on loopback.

These are slow (seconds to minutes) and need the C{docker-registry} and
C{skopeo} programs; every test skips cleanly when they are missing.  The
reusable pieces are L{tests.integration.registry} (start a registry in one
of three auth modes), L{tests.integration.tokenserver} (a token issuer the
registry trusts), L{tests.integration.oci} (write OCI image layouts without
docker or the internet) and L{tests.integration.clients} (run skopeo and
podman as child processes).
"""
