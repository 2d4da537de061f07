"""satsrelay: a Nostr relay whose writes are paid in sats.

The package is layered as ``../README.md`` ("How it works") describes: a pure core
(``event``, ``filters``, ``messages``, ``policy``) with no I/O, stages that own one job
each (``store.writer``, ``subscriptions``, ``connection``), and thin shells (``server``,
``cli``, ``config``).
"""

__version__ = "0.1.0"
