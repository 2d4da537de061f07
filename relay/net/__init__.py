"""Layer 2, the network shell: one asyncio protocol per TCP connection (h11 for HTTP/1.1,
websockets' sans-I/O protocol after the upgrade), the HTTP router's types, the outbox with
back-pressure, and the per-address limits taken before any work.

It knows bytes, HTTP and addresses, not Nostr.
"""
