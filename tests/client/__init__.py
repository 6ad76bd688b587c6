"""One behavioural suite for the three client runtimes (trio, asyncio, synchronous).

Rules: every test talks to a real gateway on 127.0.0.1, port 0 (``GatewayThread``
runs it in a thread of its own, so any runtime can drive a client against it);
every wait is bounded (``TIMEOUT``) and waits on a condition, never on a sleep;
the runtimes are driven through ``Driver`` (drivers.py), which gives each of them
the same blocking calls, so one test body covers all three.
"""
