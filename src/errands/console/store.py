"""The console's one table: the secret that signs its session cookies and form tokens."""

import secrets

from errands.core.db import Pool

__all__ = ["signing_secret"]

SECRET_BYTES = 32

# The first process to ask makes the secret; every later one reads the same row.
ENSURE_SECRET = """
    INSERT INTO console_secret (secret)
    VALUES (%(secret)s)
        ON CONFLICT (only_row) DO NOTHING
"""

SELECT_SECRET = """
    SELECT secret
      FROM console_secret
"""


async def signing_secret(pool: Pool) -> bytes:
    async with pool.connection() as conn:
        await conn.execute(ENSURE_SECRET, {"secret": secrets.token_bytes(SECRET_BYTES)})
        cursor = await conn.execute(SELECT_SECRET)
        row = await cursor.fetchone()
    assert row is not None  # inserted just above if it was missing
    return bytes(row["secret"])
