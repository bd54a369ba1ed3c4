"""
Declares the C{regproxy-tls:...} and C{regproxy-tcp:...} endpoint
descriptions; the code lives in L{regproxy.tls.endpoint} and
L{regproxy.tls.dualstack}.
"""

from regproxy.tls.dualstack import PlainEndpointParser
from regproxy.tls.endpoint import TLSEndpointParser

regproxyTLS = TLSEndpointParser()
regproxyTCP = PlainEndpointParser()
