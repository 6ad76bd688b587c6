"""Keys and tokens for the JWT tests: real keys made once per run, tokens signed by
PyJWT, and the forgeries PyJWT refuses to make (``alg: none``, HS256 keyed with a
public key), built by hand from their RFC 7515 parts."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
#: A fixed Unix time the fake clocks start from.
T0 = 1_800_000_000


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
    return ec.generate_private_key(curves[curve])


@functools.cache
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(private: Any) -> bytes:
    return bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def write_pem(path: Path, private: Any) -> str:
    path.write_bytes(public_pem(private))
    return str(path)


def write_jwks(path: Path, keys: dict[str, tuple[Any, str | None]]) -> str:
    """A JWKS file of the public halves of ``keys`` (kid: (private key, alg or None))."""
    entries = []
    for kid, (private, alg) in keys.items():
        entry = json.loads(
            jwt.algorithms.get_default_algorithms()[alg or _alg_of(private)].to_jwk(
                private.public_key()
            )
        )
        entry["kid"] = kid
        if alg is not None:
            entry["alg"] = alg
        else:
            entry.pop("alg", None)
        entries.append(entry)
    path.write_text(json.dumps({"keys": entries}))
    return str(path)


def _alg_of(private: Any) -> str:
    if isinstance(private, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return "ES256"
    return "EdDSA"


def claims(
    sub: str = "dash-1",
    client_type: str = "DASHBOARD",
    *,
    now: float = T0,
    ttl: float = 600,
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {"sub": sub, "client_type": client_type, "iat": int(now)}
    out["exp"] = int(now + ttl)
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def sign(payload: dict[str, Any], key: Any = SECRET, alg: str = "HS256", **headers: Any) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers=headers or None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"


def unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    """An ``alg: none`` token (empty signature)."""
    return _segments({"alg": alg, "typ": "JWT"}, payload) + "."


def hs_with_public_key(payload: dict[str, Any], public: bytes, alg: str = "HS256") -> str:
    """The RS/HS confusion: HMAC over the token keyed with the public key's PEM."""
    head = _segments({"alg": alg, "typ": "JWT"}, payload)
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return f"{head}.{_b64(hmac.new(public, head.encode(), digest).digest())}"


def tampered(token: str, **changes: Any) -> str:
    """``token`` with its payload changed and its signature kept."""
    head, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    return f"{head}.{_b64(json.dumps(data).encode())}.{signature}"
