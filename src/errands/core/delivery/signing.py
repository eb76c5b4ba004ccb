"""Standard Webhooks v1 signatures (standardwebhooks.com): what a receiver verifies.

`webhook-signature` is `v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`,
one space-separated entry per secret, so receivers keep verifying while a secret is rotated.
"""

import base64
import hashlib
import hmac
import uuid

__all__ = ["signature_header", "webhook_headers"]


def signature_header(keys: list[bytes], webhook_id: str, timestamp: int, body: bytes) -> str:
    message = f"{webhook_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()
        for key in keys
    )


def webhook_headers(
    keys: list[bytes], delivery_id: uuid.UUID, timestamp: int, body: bytes
) -> dict[str, str]:
    """The headers every attempt carries: the stable id (also as Idempotency-Key), this
    attempt's time, and the signatures when secrets are set."""
    webhook_id = str(delivery_id)
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "Idempotency-Key": webhook_id,
    }
    if keys:
        headers["webhook-signature"] = signature_header(keys, webhook_id, timestamp, body)
    return headers
