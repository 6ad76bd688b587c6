"""catsock's benchmark harness: ``python -m bench`` (see docs/benchmarks.md).

Modules: ``wsclient`` (the generator's lean WebSocket / socket.io client),
``loadgen`` (publishers, subscribers, loss and latency tracking, storms),
``servers`` (starting, pinning, measuring and stopping catsock and the peers in
``bench/peers/``), ``scenarios`` (the plan and the five scenarios) and ``report``
(JSON, markdown and plots).
"""
