"""Layer 5, sessions and fan-out: one ``Connection`` per WebSocket (its subscriptions, AUTH'd
pubkeys and budgets; the write and read paths), the live subscription index, the verifier pool,
the fair turns for heavy reads, the NIP-11 document, and ``server.Relay``
which holds them together for one process.
"""
