"""Rejections whose text is the NIP-01 machine-readable reply.

Every refusal the relay sends (``OK false`` or ``CLOSED``) is one of these; the prefix
is fixed by the class so a policy cannot forget it or misspell it.
"""

from __future__ import annotations


class Rejection(Exception):
    """A refusal with a NIP-01 prefix; ``str(exc)`` is the full ``prefix: reason``."""

    prefix = "error"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.prefix}: {self.reason}"


class Invalid(Rejection):
    prefix = "invalid"


class Blocked(Rejection):
    prefix = "blocked"


class RateLimited(Rejection):
    prefix = "rate-limited"


class Restricted(Rejection):
    prefix = "restricted"


class AuthRequired(Rejection):
    """NIP-42: the client must authenticate (or authenticate as someone else) first."""

    prefix = "auth-required"


class PowTooLow(Rejection):
    prefix = "pow"


class Unsupported(Rejection):
    prefix = "unsupported"


class ServerError(Rejection):
    prefix = "error"
