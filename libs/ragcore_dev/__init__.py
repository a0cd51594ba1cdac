"""Development-only code: stand-in neighbours and process helpers for the local stack and the tests.

No deployable image imports this package (tests/e2e/pex_test.py checks every pex's contents).
"""
