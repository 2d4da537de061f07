"""A free tier by web of trust (issue 21): people the operator's circle follows write free.

A plug-in beside payments, on the core's hook lists (``relay.plugins.hooks``), found through the
``satsrelay.extensions`` entry point ``wot.plugin:PLUGIN``:

- ``wot.graph``: the trusted set, pure: who is within ``max_hops`` of the roots through
  NIP-02 contact lists, kept up to date incrementally as lists change;
- ``wot.store``: its rows in the relay's own database (``relay.store.database``): the
  result, so a restart or another node serves it at once; and the contact lists and
  NIP-85 assertions read from the event store;
- ``wot.sources``: contact lists (and NIP-85 ranks) the graph needs, brought in from
  ``[wot] sources`` with the relay's own sync, bounded per refresh;
- ``wot.tier``: the running plug-in: its write gate (order 10: a member is admitted free
  before payments is asked; a stranger hears both ways in), limits, ``/wot/<pubkey>``,
  console panel and the refresher service;
- ``wot.settings``: the ``[wot]`` section.
"""
