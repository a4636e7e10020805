"""The network layer: asyncio endpoints, the session lifecycle, the listener.

Thin on purpose: it reads, feeds ``protocol/``, writes, and delegates
decisions. The session relays each client to its own unified backend.
"""
