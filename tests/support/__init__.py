"""Helpers shared by the tests and the benches (``bench/`` imports them; tests never import
``bench``)."""
