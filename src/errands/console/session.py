"""Who is looking at the console, and the checks every form passes.

With API keys off the console is open to clients on this machine (loopback) only. With keys on,
a person signs in once with a key; the session cookie then holds the key's id inside a signed,
timestamped value (so it expires however long the browser keeps it), is HttpOnly and
SameSite=Strict, and Secure under https. Every page reads the key again, so a revoked key or a
narrower scope takes effect at once.

Each form carries a token derived from a random nonce in a cookie of its own (HttpOnly,
SameSite=Strict) and the signing secret: a page of another site can neither read the token nor
forge one, even if it manages to plant a cookie. A cross-site `Sec-Fetch-Site` or a foreign
`Origin` is refused as well.
"""

import hashlib
import hmac
import ipaddress
import secrets
import uuid
from dataclasses import dataclass

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from errands.console.store import signing_secret
from errands.core.auth import ApiKey, find_key, get_key
from errands.core.resources import Resources

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "SESSION_COOKIE",
    "FormToken",
    "PageError",
    "SignInNeeded",
    "Viewer",
    "checked_form",
    "current_viewer",
    "end_session",
    "form_token",
    "require_scope",
    "start_session",
]

SESSION_COOKIE = "errands_session"
CSRF_COOKIE = "errands_csrf"
CSRF_FIELD = "csrf_token"
SESSION_SALT = "errands.console.session"
CSRF_COOKIE_S = 30 * 24 * 3600


@dataclass(frozen=True)
class Viewer:
    """The person using the console: the key they signed in with, or nobody when keys are off
    (then every page is open)."""

    key_name: str | None
    scopes: frozenset[str] | None  # None: keys are off

    @property
    def signed_in(self) -> bool:
        return self.key_name is not None

    def allows(self, scope: str) -> bool:
        return self.scopes is None or scope in self.scopes or "admin" in self.scopes


class PageError(Exception):
    """A page that cannot be shown (not allowed, nothing there, a form that failed its checks);
    the console shows `detail` on an error page with this status."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


class SignInNeeded(Exception):
    """No valid session: the viewer is sent to the sign-in page, then back to `next_path`."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


async def _secret(request: Request, resources: Resources) -> bytes:
    """The database's signing secret, read once per app (it never changes)."""
    secret: bytes | None = getattr(request.app.state, "console_secret", None)
    if secret is None:
        secret = await signing_secret(resources.pool)
        request.app.state.console_secret = secret
    return secret


def _serializer(secret: bytes) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt=SESSION_SALT)


def _is_loopback(request: Request) -> bool:
    if request.client is None:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def _path_with_query(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


async def current_viewer(request: Request, resources: Resources) -> Viewer:
    """The viewer of this request; raises PageError or SignInNeeded when there is none."""
    if not resources.settings.api_keys_enabled:
        if not _is_loopback(request):
            raise PageError(
                403,
                "API keys are off, so the console answers only on this machine; turn on "
                "ERRANDS_API_KEYS_ENABLED to sign in from elsewhere",
            )
        return Viewer(key_name=None, scopes=None)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise SignInNeeded(_path_with_query(request))
    serializer = _serializer(await _secret(request, resources))
    try:
        key_id = uuid.UUID(
            serializer.loads(cookie, max_age=resources.settings.console_session_s)["key"]
        )
    except (BadSignature, KeyError, TypeError, ValueError):
        raise SignInNeeded(_path_with_query(request)) from None
    async with resources.pool.connection() as conn:
        key = await get_key(conn, key_id)
    if key is None or key.revoked_at is not None:
        raise SignInNeeded(_path_with_query(request))
    return Viewer(key_name=key.name, scopes=frozenset(key.scopes))


def require_scope(viewer: Viewer, scope: str) -> None:
    if not viewer.allows(scope):
        raise PageError(403, f"the key {viewer.key_name!r} lacks the {scope!r} scope for this page")


async def start_session(
    request: Request, resources: Resources, secret_key: str, response: Response
) -> ApiKey | None:
    """Sign in with an API key: set the session cookie and return the key, or None when the
    key is unknown or revoked."""
    async with resources.pool.connection() as conn:
        key = await find_key(conn, secret_key.strip())
    if key is None or key.revoked_at is not None:
        return None
    token = _serializer(await _secret(request, resources)).dumps({"key": str(key.id)})
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=resources.settings.console_session_s,
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return key


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


def _token_for(secret: bytes, nonce: str) -> str:
    return hmac.new(secret, f"csrf:{nonce}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class FormToken:
    token: str
    new_nonce: str | None  # set when the viewer had no nonce cookie yet

    def set_cookie(self, request: Request, response: Response) -> None:
        if self.new_nonce is not None:
            response.set_cookie(
                CSRF_COOKIE,
                self.new_nonce,
                max_age=CSRF_COOKIE_S,
                path="/",
                secure=request.url.scheme == "https",
                httponly=True,
                samesite="strict",
            )


async def form_token(request: Request, resources: Resources) -> FormToken:
    """The token for this viewer's forms; its nonce cookie is made if missing."""
    nonce = request.cookies.get(CSRF_COOKIE)
    new_nonce = None if nonce else secrets.token_urlsafe(32)
    secret = await _secret(request, resources)
    return FormToken(_token_for(secret, nonce or str(new_nonce)), new_nonce)


async def checked_form(request: Request, resources: Resources) -> dict[str, str]:
    """The submitted form's text fields, once it passed the CSRF checks (PageError otherwise)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise PageError(403, "this form was sent from another site")
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin is not None and origin != own:
        raise PageError(403, f"this form was sent from another origin ({origin})")
    form = await request.form()
    fields = {name: value for name, value in form.items() if isinstance(value, str)}
    nonce = request.cookies.get(CSRF_COOKIE, "")
    sent = fields.pop(CSRF_FIELD, "")
    expected = _token_for(await _secret(request, resources), nonce)
    if not nonce or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise PageError(403, "this form has expired or was not sent from the console; reload it")
    return fields
