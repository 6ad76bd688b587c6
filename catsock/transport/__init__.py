"""The server's WebSocket transport: frames, the opening handshake, and the socket link.

No gateway logic lives here. ``frames`` is sans-IO (RFC 6455 frames in, messages
out), ``handshake`` answers an upgrade the front door parsed, and ``link`` owns a
connection's socket once the handshake is done (large reads, writes without a task).
"""
