"""
Declares the C{regproxy-tls:...} endpoint description; the code lives in
L{regproxy.tls.endpoint}.
"""

from regproxy.tls.endpoint import TLSEndpointParser

regproxyTLS = TLSEndpointParser()
