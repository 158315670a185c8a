"""Dynamic linking: the challenge a passkey signs to confirm one transfer is derived
from that transfer's amount, currency and both accounts, with a single-use nonce, so an
assertion confirms exactly what its sender saw, once (PSD2 RTS, Article 5)."""

from __future__ import annotations

import hashlib

import msgspec

from server.domain.model import Transfer

# A passkey ceremony (registering one, confirming a transfer) is given this long.
CEREMONY_MS = 120_000
MAX_NAME = 64


def challenge(transfer: Transfer, nonce: str) -> bytes:
    """SHA-256 over the transfer's id, amount (minor units), currency, source and
    destination accounts and the nonce, as one JSON array: no two differ and encode alike."""
    fields = [
        transfer.id,
        transfer.amount,
        transfer.currency,
        transfer.from_account,
        transfer.to_account,
        nonce,
    ]
    return hashlib.sha256(msgspec.json.encode(fields)).digest()
