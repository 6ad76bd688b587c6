"""catsock test suite; the rules are in conftest.py."""
