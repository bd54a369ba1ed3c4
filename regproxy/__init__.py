"""
regproxy: a registry front door for container fleets.
"""

__version__ = "0.1.0"
