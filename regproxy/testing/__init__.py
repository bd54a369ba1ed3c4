"""
Test doubles that ship with regproxy, so its own tests and the tests of
anything built on it can use them: see L{regproxy.testing.fakebalena}.
"""
