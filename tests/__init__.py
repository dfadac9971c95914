"""Test package, so that test modules can share helpers (``from tests.strategies import ...``)."""
