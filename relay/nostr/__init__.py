"""Layer 1, the Nostr rules: events, ids and signatures, filters, client and relay messages,
write policies, NIP-98 checks, negentropy, search tokenising, NIP-86 request shapes, HyperLogLog.

Pure: nothing here opens a socket, a file or a database or reads the clock (tests/test_layers.py
holds it to that), so every rule is tested with plain values.
"""
