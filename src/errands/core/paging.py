"""Keyset pagination, newest first: a listing asks for one row more than its page, and when that
row comes the page's last (created_at, id) becomes the cursor of the next page, opaque to
clients. Pages stay consistent while new rows arrive."""

import base64
import uuid
from datetime import datetime
from typing import Any

__all__ = ["BadCursor", "cursor_position", "split_page"]


class BadCursor(ValueError):
    """A page cursor that no listing here made."""


def _page_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    """The cursor of the page after the row created at `created_at` with id `row_id`."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def cursor_position(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) after which the cursor's page starts."""
    try:
        created_at, row_id = base64.urlsafe_b64decode(cursor).decode().split("|")
        return datetime.fromisoformat(created_at), uuid.UUID(row_id)
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
        raise BadCursor(
            "cursor is not one a previous page returned: pass its next_cursor back"
        ) from None


def split_page(rows: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """The page of `limit` rows out of up to `limit + 1` fetched, and the next page's cursor
    (None on the last page)."""
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], _page_cursor(last["created_at"], last["id"])
