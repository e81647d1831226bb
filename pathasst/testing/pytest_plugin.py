"""pytest fixtures over the factories in pathasst.testing (registered by tests/conftest.py)."""
