"""API keys: created and revoked from the CLI, stored hashed, checked on every request when on.

With keys on, `errands migrate` gives a database that never had a key one admin key, the
bootstrap key, printed once, so a fresh install can be administered.

A route needs the scope named by its router's tag (titles, stats, timers, conversions,
monitors); a route without one of those tags needs `admin`, and an `admin` key opens every
route. /healthz, /readyz, /metrics and the API documentation stay open. Badges may be asked for
without a key (the route itself shows only public monitors to a request without one). A route
finds the key that opened it in `request.state.api_key` (absent with keys off).
The console's pages check its own session cookie instead (console/session.py), and the status
page is public.
"""

import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from errands.core.db import Pool

__all__ = [
    "DOCS_ASSETS_PATH",
    "FEATURE_SCOPES",
    "KEY_OPTIONAL_PATH",
    "KEY_PREFIX",
    "SCOPES",
    "ApiKey",
    "ApiKeyMiddleware",
    "Connection",
    "create_bootstrap_key",
    "create_key",
    "find_key",
    "get_key",
    "hash_key",
    "is_open_path",
    "list_keys",
    "revoke_key",
]

FEATURE_SCOPES = ("titles", "stats", "timers", "conversions", "monitors")
SCOPES = (*FEATURE_SCOPES, "admin")
KEY_PREFIX = "errands_"
# Enough of a key to recognise it in a listing, too little to help guess the rest.
SHOWN_PREFIX_CHARS = len(KEY_PREFIX) + 6
DOCS_ASSETS_PATH = "/docs/assets"
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
    | {
        f"{DOCS_ASSETS_PATH}/{name}"
        for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
    }
)
KEY_OPTIONAL_PATH = re.compile(r"^/monitors/[^/]+/badge/[a-z]+\.svg$")
# Pages of the console, which signs people in with a key once and then reads its own cookie.
CONSOLE_PATHS = frozenset({"/", "/status"})
CONSOLE_PREFIX = "/console/"
# Bounds the memory the lookup cache can take, whatever keys clients send.
MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None

    def allows(self, scope: str | None) -> bool:
        """Whether this key opens a route needing `scope` (None: any valid key will do)."""
        return scope is None or scope in self.scopes or "admin" in self.scopes


def hash_key(key: str) -> bytes:
    """SHA-256 of the key.

    A fast hash is enough here, unlike for passwords: keys carry 256 random bits, so nobody can
    guess one from a leaked hash however fast they hash, and a fast hash lets every request find
    its key through a unique index.
    """
    return hashlib.sha256(key.encode()).digest()


INSERT_KEY = """
    INSERT INTO api_keys (name, prefix, key_hash, scopes)
    VALUES (%(name)s, %(prefix)s, %(key_hash)s, %(scopes)s)
    RETURNING id, name, prefix, scopes, created_at, revoked_at
"""

REVOKE_KEY = """
    UPDATE api_keys
       SET revoked_at = coalesce(revoked_at, now())
     WHERE id = %(id)s
    RETURNING id, name, prefix, scopes, created_at, revoked_at
"""

LIST_KEYS = """
    SELECT id, name, prefix, scopes, created_at, revoked_at
      FROM api_keys
     ORDER BY created_at, id
"""

FIND_KEY = """
    SELECT id, name, prefix, scopes, created_at, revoked_at
      FROM api_keys
     WHERE key_hash = %(key_hash)s
"""

GET_KEY = """
    SELECT id, name, prefix, scopes, created_at, revoked_at
      FROM api_keys
     WHERE id = %(id)s
"""

# Held while deciding whether a bootstrap key is needed, so two processes cannot both make one.
LOCK_KEYS = "LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE"

ANY_KEY = """
    SELECT EXISTS (SELECT 1 FROM api_keys) AS any_key
"""

Connection = psycopg.AsyncConnection[dict[str, Any]]
BOOTSTRAP_KEY_NAME = "bootstrap"


def is_open_path(path: str) -> bool:
    """Paths the key middleware lets through: public ones, and the console's own."""
    return path in PUBLIC_PATHS or path in CONSOLE_PATHS or path.startswith(CONSOLE_PREFIX)


async def create_key(conn: Connection, name: str, scopes: Iterable[str]) -> tuple[ApiKey, str]:
    """Store a new key and return it with its secret, which is never stored nor shown again."""
    wanted = sorted(set(scopes))
    unknown = sorted(set(wanted) - set(SCOPES))
    if unknown or not wanted:
        got = ", ".join(unknown) or "none"
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {got}")
    if not 1 <= len(name) <= 100:
        raise ValueError("the name must have 1 to 100 characters")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    cursor = await conn.execute(
        INSERT_KEY,
        {
            "name": name,
            "prefix": secret[:SHOWN_PREFIX_CHARS],
            "key_hash": hash_key(secret),
            "scopes": wanted,
        },
    )
    row = await cursor.fetchone()
    assert row is not None
    return ApiKey(**row), secret


async def create_bootstrap_key(conn: Connection) -> tuple[ApiKey, str] | None:
    """An admin key for a database that has never had a key (revoked ones count), else None."""
    async with conn.transaction():
        await conn.execute(LOCK_KEYS)
        cursor = await conn.execute(ANY_KEY)
        row = await cursor.fetchone()
        assert row is not None
        if row["any_key"]:
            return None
        return await create_key(conn, BOOTSTRAP_KEY_NAME, ["admin"])


async def revoke_key(conn: Connection, key_id: uuid.UUID) -> ApiKey | None:
    """Revoke a key (again is harmless); None when no key has that id."""
    cursor = await conn.execute(REVOKE_KEY, {"id": key_id})
    row = await cursor.fetchone()
    return None if row is None else ApiKey(**row)


async def find_key(conn: Connection, secret: str) -> ApiKey | None:
    """The key whose secret this is, revoked or not; None for a secret no key has."""
    cursor = await conn.execute(FIND_KEY, {"key_hash": hash_key(secret)})
    row = await cursor.fetchone()
    return None if row is None else ApiKey(**row)


async def get_key(conn: Connection, key_id: uuid.UUID) -> ApiKey | None:
    cursor = await conn.execute(GET_KEY, {"id": key_id})
    row = await cursor.fetchone()
    return None if row is None else ApiKey(**row)


async def list_keys(conn: Connection) -> list[ApiKey]:
    cursor = await conn.execute(LIST_KEYS)
    return [ApiKey(**row) for row in await cursor.fetchall()]


class ApiKeyMiddleware:
    """Refuse requests without a valid key for the route's scope, before reading their body.

    Found keys are cached per process for `cache_s` seconds, so a revoked key stops working
    within that time and a busy API does not query PostgreSQL on every request.
    """

    def __init__(self, app: ASGIApp, cache_s: float) -> None:
        self.app = app
        self.cache_s = cache_s
        self._cache: dict[bytes, tuple[float, ApiKey]] = {}
        self._scoped_routes: list[tuple[BaseRoute, str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        refusal = await self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await refusal(scope, receive, send)

    async def _refusal(self, scope: Scope) -> JSONResponse | None:
        secret = _bearer_token(scope)
        if secret is None:
            if KEY_OPTIONAL_PATH.match(scope["path"]):
                return None
            return _unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
        try:
            key = await self._find(scope["app"].state.resources.pool, secret)
        except (psycopg.Error, PoolTimeout):
            return JSONResponse(
                {"detail": "cannot check the API key: the database is unavailable"},
                status_code=503,
            )
        if key is None:
            return _unauthorized("invalid API key", error="invalid_token")
        if key.revoked_at is not None:
            return _unauthorized(f"API key {key.prefix}… was revoked", error="invalid_token")
        needed = self._scope_of(scope)
        if not key.allows(needed):
            return JSONResponse(
                {"detail": f"API key {key.name!r} lacks the {needed!r} scope for this route"},
                status_code=403,
            )
        scope.setdefault("state", {})["api_key"] = key
        return None

    async def _find(self, pool: Pool, secret: str) -> ApiKey | None:
        key_hash = hash_key(secret)
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with pool.connection() as conn:
            key = await find_key(conn, secret)
        if key is None:
            return None
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache.clear()
        self._cache[key_hash] = (now + self.cache_s, key)
        return key

    def _scope_of(self, scope: Scope) -> str | None:
        """The scope of the route the router will pick: the first full match, else the first
        partial one (a path served for other methods, which answers 405); None for a path no
        route serves (it 404s)."""
        if self._scoped_routes is None:
            self._scoped_routes = list(_scoped_routes(scope["app"].routes))
        partial = None
        for route, needed in self._scoped_routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return needed
            if match == Match.PARTIAL and partial is None:
                partial = needed
        return partial


def _scoped_routes(routes: Iterable[Any]) -> Iterable[tuple[BaseRoute, str]]:
    """Every route with the scope its tags call for, included routers flattened."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            yield from _scoped_routes(contexts())
            continue
        tags = [str(tag) for tag in getattr(route, "tags", None) or ()]
        yield route, next((tag for tag in tags if tag in FEATURE_SCOPES), "admin")


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            header: str = value.decode("latin-1")
            kind, _, token = header.partition(" ")
            token = token.strip()
            if kind.lower() == "bearer" and token:
                return token
            return None
    return None


def _unauthorized(detail: str, *, error: str | None = None) -> JSONResponse:
    challenge = 'Bearer realm="errands"' + (f', error="{error}"' if error else "")
    return JSONResponse(
        {"detail": detail}, status_code=401, headers={"WWW-Authenticate": challenge}
    )
