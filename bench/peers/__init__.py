"""Peer relays the benchmark compares catsock with; each is a standalone script (``--port``)."""
