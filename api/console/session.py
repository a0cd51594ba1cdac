"""The console's session: an admin key signs in once; the browser keeps only a signed cookie.

The cookie holds a fingerprint of the key (an HMAC of its SHA-256 under the console's secret, never
the key) and the session's CSRF token. Every request checks the signature and age, then that an
admin key of that fingerprint is still configured: removing the key ends its sessions at once.
Before sign-in the same cookie carries only a CSRF token, so the sign-in form is a checked POST too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Form, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from api.auth import scope_of
from api.deps import SettingsDep
from ragcore.settings import Settings

COOKIE = "ragcore_console"
PATH = "/console"
#: Before sign-in: long enough to type a key, short enough that a stale form is refused.
_FORM_SECONDS = 3600


class SignInRequired(Exception):
    """No valid session: the browser goes to the sign-in page (handled in api.console.install)."""


class CsrfRefused(Exception):
    """A POST without the session's CSRF token (handled in api.console.install)."""


class KeyRefused(ValueError):
    """A sign-in with a key that is unknown or not an admin key; the message says which."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class Operator:
    """The signed-in operator: which admin key (its fingerprint) and the session's CSRF token."""

    fingerprint: str
    csrf: str


def secret_of(settings: Settings) -> str:
    """The configured secret, or one drawn for this process (see `console_secret`)."""
    if settings.api.console_secret is not None:
        return settings.api.console_secret.get_secret_value()
    return secrets.token_urlsafe(32)


def _serializer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(request.app.state.console_secret, salt="ragcore-console")


def _fingerprint(request: Request, digest: str) -> str:
    key = request.app.state.console_secret.encode()
    return hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()


def _admin_fingerprints(request: Request, settings: Settings) -> list[str]:
    digests = [
        entry.removeprefix("sha256:")
        if entry.startswith("sha256:")
        else hashlib.sha256(entry.encode()).hexdigest()
        for entry, scope in settings.api.keys.items()
        if scope == "admin"
    ]
    return [_fingerprint(request, d) for d in digests]


def _read(request: Request, max_age: int) -> dict[str, str] | None:
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = _serializer(request).loads(raw, max_age=max_age)
    except BadSignature:  # tampered, signed by another secret, or expired
        return None
    return data if isinstance(data, dict) else None


def _write(request: Request, response: Response, data: dict[str, str], max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        _serializer(request).dumps(data),
        max_age=max_age,
        path=PATH,
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
    )


def current(request: Request, settings: SettingsDep) -> Operator:
    """The signed-in session; SignInRequired when there is none or its key is gone."""
    data = _read(request, settings.api.console_session_seconds)
    if not data or "fp" not in data or "csrf" not in data:
        raise SignInRequired
    # Compared with every admin key's fingerprint, so timing does not tell which matched.
    matched = False
    for fingerprint in _admin_fingerprints(request, settings):
        matched |= hmac.compare_digest(fingerprint, data["fp"])
    if not matched:
        raise SignInRequired
    return Operator(data["fp"], data["csrf"])


def form_token(request: Request) -> str:
    """The CSRF token of the sign-in form: the pre-session cookie's, or a new one."""
    data = _read(request, _FORM_SECONDS)
    return data["csrf"] if data and data.get("csrf") else secrets.token_urlsafe(24)


def keep_form_token(request: Request, response: Response, token: str) -> None:
    _write(request, response, {"csrf": token}, _FORM_SECONDS)


def check_form_token(request: Request, token: str) -> None:
    data = _read(request, _FORM_SECONDS)
    if not data or not token or not hmac.compare_digest(data.get("csrf", ""), token):
        raise CsrfRefused


def sign_in(request: Request, response: Response, settings: Settings, key: str) -> None:
    """Start a session for `key` if it is an admin key; KeyRefused says why not."""
    scope = scope_of(key, settings.api.keys) if key else None
    if scope is None:
        raise KeyRefused(
            "this key is not configured (RAGCORE_API_KEYS); check it and try again", 401
        )
    if scope != "admin":
        raise KeyRefused(f"this key's scope is {scope!r}: the console takes an admin key", 403)
    digest = hashlib.sha256(key.encode()).hexdigest()
    data = {"fp": _fingerprint(request, digest), "csrf": secrets.token_urlsafe(24)}
    _write(request, response, data, settings.api.console_session_seconds)


def sign_out(response: Response) -> None:
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")


def checked(
    operator: Annotated[Operator, Depends(current)], csrf: Annotated[str, Form()] = ""
) -> Operator:
    """The session of a POST whose form carries the session's CSRF token; CsrfRefused otherwise."""
    if not csrf or not hmac.compare_digest(csrf, operator.csrf):
        raise CsrfRefused
    return operator


ConsoleSession = Annotated[Operator, Depends(current)]
CheckedSession = Annotated[Operator, Depends(checked)]
