"""NIP-17 private direct messages from the relay's key, sealed and gift-wrapped (NIP-59).

- the **rumor** is an unsigned kind-14 chat message from the relay to the member (its id
  computed, no signature: if it leaks, nobody can prove the relay wrote it);
- the **seal** (kind 13, no tags) carries the rumor NIP-44 v2 encrypted from the relay's
  key to the member's, signed by the relay;
- the **gift wrap** (kind 1059, one ``p`` tag naming the member) carries the seal encrypted
  with a one-time key, signed by that key: the outside shows only the recipient.

Seal and wrap are dated up to two days in the past at random (NIP-59), so their
timestamps do not tell when the message was written.
"""

from __future__ import annotations

import secrets

import orjson

from lightning import nip44
from relay.nostr import crypto
from relay.nostr.event import Event, compute_id, sign_event

CHAT_KIND = 14
SEAL_KIND = 13
WRAP_KIND = 1059
TWO_DAYS = 2 * 86400


def _past(now: int) -> int:
    return now - secrets.randbelow(TWO_DAYS)


def rumor(sender_pubkey: str, recipient: str, content: str, now: int) -> dict[str, object]:
    tags = [["p", recipient]]
    event_id = compute_id(sender_pubkey, now, CHAT_KIND, tags, content)
    return {
        "id": event_id,
        "pubkey": sender_pubkey,
        "created_at": now,
        "kind": CHAT_KIND,
        "tags": tags,
        "content": content,
    }


def gift_wrap(sender_secret: bytes, recipient: str, content: str, now: int) -> Event:
    """The kind-1059 event that delivers ``content`` to ``recipient`` (hex pubkey)."""
    sender_pubkey = crypto.public_key(sender_secret).hex()
    recipient_x = bytes.fromhex(recipient)
    inner = orjson.dumps(rumor(sender_pubkey, recipient, content, now)).decode()
    sealed = nip44.encrypt(inner, nip44.conversation_key(sender_secret, recipient_x))
    seal = sign_event(sender_secret, SEAL_KIND, sealed, [], created_at=_past(now))
    one_time = crypto.generate_secret()
    wrapped = nip44.encrypt(seal.raw.decode(), nip44.conversation_key(one_time, recipient_x))
    return sign_event(one_time, WRAP_KIND, wrapped, [["p", recipient]], created_at=_past(now))
