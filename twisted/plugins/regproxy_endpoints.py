"""
Declares the C{regproxy-tls:...} endpoint description; the code lives in
L{regproxy.endpoint}.
"""

from regproxy.endpoint import TLSEndpointParser

regproxyTLS = TLSEndpointParser()
