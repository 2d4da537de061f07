"""The plug-in seam: what a plug-in is (``protocol``) and the ordered hook lists it fills
(``hooks``: write gates, read scopes, HTTP routes, NIP-86 methods, console panels, NIP-11 fields,
storage allowances, periodic jobs). Plug-ins import this package; it imports none of them.
"""
