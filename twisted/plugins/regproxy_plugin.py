"""
Declares the C{twistd regproxy} command; the code lives in L{regproxy.tap}.
"""

from twisted.application.service import ServiceMaker

regproxy = ServiceMaker(
    "regproxy",
    "regproxy.tap",
    "A registry front door for container fleets.",
    "regproxy",
)
