"""Passwords and tokens for the development server.

Tokens are what Glimpse issues: HS256 JWTs with claims ``id`` (24-hex user
id), ``username``, ``iat`` and ``exp`` seven days later. The agent refreshes
its token before ``exp``, so the dev server must issue the same claims.

Passwords are hashed with scrypt (a memory-hard KDF from the stdlib) and a
random salt, and compared in constant time. It is a dev server, but it
listens on a socket and people reuse passwords; plain SHA would be a trap.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Any

import jwt

TOKEN_LIFETIME_S = 7 * 24 * 3600
_ALGORITHM = "HS256"
_HEX24 = re.compile(r"[0-9a-f]{24}")

# scrypt cost: n=2**14, r=8 needs 16 MiB and ~50 ms, OWASP's minimum is n=2**17
# for production; a development server trades some strength for fast tests.
_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
# Hashing an absurdly long password would be a cheap way to burn CPU.
MAX_PASSWORD_LENGTH = 1024


class InvalidToken(Exception):
    """The token is malformed, badly signed, expired, or lacks Glimpse's claims."""


def hash_password(password: str) -> str:
    """Hash a password for storage as ``scrypt$n$r$p$salt$key`` (hex)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${key.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Check a password against a stored hash, in constant time."""
    try:
        scheme, n, r, p, salt_hex, key_hex = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = bytes.fromhex(key_hex)
        key = _scrypt(password, bytes.fromhex(salt_hex), int(n), int(r), int(p), len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(key, expected)


def dummy_verify(password: str) -> None:
    """Spend the time a real check costs, so unknown usernames are not revealed by timing."""
    _scrypt(password, b"\0" * _SALT_BYTES, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int = _KEY_BYTES) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=128 * n * r * p + 1024 * 1024,
        dklen=dklen,
    )


def issue_token(secret: str, user_id: str, username: str, *, now: float | None = None) -> str:
    """A Glimpse-shaped JWT for this user, valid for seven days."""
    iat = int(time.time() if now is None else now)
    claims = {"id": user_id, "username": username, "iat": iat, "exp": iat + TOKEN_LIFETIME_S}
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def decode_token(secret: str, token: str) -> dict[str, Any]:
    """Verify signature, expiry and claims; raise :class:`InvalidToken` otherwise."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],
            options={"require": ["id", "iat", "exp"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(type(exc).__name__) from exc
    user_id = claims.get("id")
    if not isinstance(user_id, str) or not _HEX24.fullmatch(user_id):
        raise InvalidToken("bad id claim")
    return claims
