"""Layer 4, operations: NIP-86 management state and RPC, the operator console, retention and
storage quotas, NIP-62 vanish, sync with other relays, periodic jobs and the metrics.

Their state (bans, quotas, vanished authors) is consulted by the sessions above; they never
import a session.
"""
