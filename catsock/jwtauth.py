"""Signed identity: checking a JWT with PyJWT, and minting one for tests and small setups.

``JwtVerifier`` holds the keys of ``[jwt]`` (catsock/config.py) and turns a token
into a ``JwtIdentity`` or a ``JwtRefusal``, without I/O except reading the JWKS
file again when it changed. The signature is PyJWT's; catsock picks the key and
checks the claims:

- the header's ``alg`` must be in the allow-list (``none`` never is). An HMAC
  algorithm (HS*) is verified with ``jwt.secret`` only, and a public-key
  algorithm only with ``jwt.public_key`` or a JWKS key of the matching kind
  (RSA for RS*/PS*, the named curve for ES*, Ed25519/Ed448 for EdDSA). So a
  token signed with HS256 using the public key as its secret finds no key;
- with a JWKS, the header's ``kid`` picks the key (a JWK that names an ``alg``
  serves that one only); an unknown ``kid`` is refused;
- ``sub`` (the identity), ``exp`` and the client-type claim are required;
  ``exp``, ``nbf`` and ``iat`` are checked against the injected wall clock with
  ``jwt.leeway``; ``iss`` and ``aud`` as configured (a token with an ``aud``
  is refused when no audience is configured); the user claim is optional.

Raises ``JwtConfigError`` from the constructor when a key file cannot be used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .config import HMAC_ALGORITHMS, HMAC_KEY_BYTES, PUBLIC_KEY_ALGORITHMS, JwtConfig

__all__ = [
    "MAX_TOKEN_LENGTH",
    "JwtConfigError",
    "JwtIdentity",
    "JwtRefusal",
    "JwtVerifier",
    "looks_like_jwt",
    "mint",
]

logger = logging.getLogger("catsock.jwtauth")

#: Longer tokens are refused before anything is decoded (a JWT with a few claims
#: is a few hundred bytes; an RS512 signature alone is 684 characters).
MAX_TOKEN_LENGTH = 8192
#: Longest ``sub`` and ``jti`` taken; ``sub`` is the identity in logs and limits.
MAX_SUB_LENGTH = 128
MAX_JTI_LENGTH = 256
MAX_USER_ID_LENGTH = 64
#: Shorter RSA keys are refused (NIST SP 800-131A; PyJWT warns below it too).
MIN_RSA_BITS = 2048

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_CLIENT_TYPE = re.compile(r"[A-Z][A-Z0-9_]{0,31}")
_CURVES: Mapping[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


class JwtConfigError(Exception):
    """``[jwt]`` names a key file that cannot be read or holds no usable key."""


@attrs.frozen
class JwtIdentity:
    """What a good token says: its ``sub``, client type and user, when it stops being
    honoured (``exp`` plus the leeway, Unix time) and its ``jti``."""

    sub: str
    client_type: str
    user_id: str | None
    expires_at: float
    jti: str | None


@attrs.frozen
class JwtRefusal:
    """Why a token was refused (for the log and the client: never the token).
    ``expired``: the token was good except that its time has passed."""

    detail: str
    expired: bool = False


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` has a JWS compact shape (three base64url segments), so it is
    checked as a JWT rather than looked up as an opaque token. Opaque tokens
    (``cs_...``) have no dots. The signature segment may be empty (``alg: none``,
    which is then refused as a JWT)."""
    parts = token.split(".")
    return (
        len(parts) == 3
        and bool(parts[0])
        and bool(parts[1])
        and all(_SEGMENT.fullmatch(part) for part in parts)
    )


def _key_fits(alg: str, key: PublicKey) -> bool:
    """Whether ``key`` is of the kind ``alg`` verifies with."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES[alg])
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def _load_public_key(path: str) -> PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise JwtConfigError(f"jwt.public_key: cannot read {path!r}: {exc.strerror}") from None
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except ValueError as exc:
        raise JwtConfigError(f"jwt.public_key: {path!r} holds no PEM public key: {exc}") from None
    if not isinstance(key, PublicKey):
        raise JwtConfigError(f"jwt.public_key: {path!r}: not an RSA, EC or EdDSA key")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise JwtConfigError(f"jwt.public_key: {path!r}: RSA keys need {MIN_RSA_BITS} bits")
    return key


@attrs.frozen
class _Jwk:
    key: PublicKey
    #: The JWK's ``alg``, if it names one: then it serves that algorithm only.
    alg: str | None


class _Jwks:
    """The keys of a JWKS file by ``kid``, read again when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self.keys: dict[str, _Jwk] = {}
        self.keys = self._read()  # at start-up a bad file is a config error

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> dict[str, _Jwk]:
        stamp = self._file_stamp()
        try:
            data = json.loads(Path(self.path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise JwtConfigError(f"jwt.jwks: cannot read {self.path!r}: {exc}") from None
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise JwtConfigError(f'jwt.jwks: {self.path!r} has no "keys" list')
        keys: dict[str, _Jwk] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue  # a key no token can name
            if entry.get("kty") == "oct" or entry.get("use", "sig") != "sig":
                continue  # shared secrets and encryption keys are not for this
            try:
                key = jwt.PyJWK.from_dict(entry).key
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue
            alg = entry.get("alg")
            if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
                continue
            if isinstance(key, PublicKey) and (alg is None or isinstance(alg, str)):
                keys[entry["kid"]] = _Jwk(key, alg)
        if not keys:
            raise JwtConfigError(f"jwt.jwks: {self.path!r} holds no usable public signing key")
        self._stamp = stamp
        return keys

    def get(self, kid: str) -> _Jwk | None:
        stamp = self._file_stamp()
        if stamp is not None and stamp != self._stamp:
            try:
                self.keys = self._read()
                logger.info("read the JWKS %s again: %d keys", self.path, len(self.keys))
            except JwtConfigError as exc:
                self._stamp = stamp  # warn once per change, not once per token
                logger.warning("%s; keeping the %d keys read before", exc, len(self.keys))
        return self.keys.get(kid)


class JwtVerifier:
    """See the module docstring. ``wall_clock`` is Unix time (tests inject theirs)."""

    def __init__(self, config: JwtConfig, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.wall_clock = wall_clock
        self._secret = config.secret.encode("utf-8") if config.secret else None
        self._public_key = _load_public_key(config.public_key) if config.public_key else None
        self._jwks = _Jwks(config.jwks) if config.jwks else None
        if config.algorithms:
            allowed = set(config.algorithms)
        else:
            # HS384/HS512 only with a secret as long as their hash (RFC 7518 §3.2).
            secret = self._secret or b""
            allowed = {a for a in HMAC_ALGORITHMS if secret and len(secret) >= HMAC_KEY_BYTES[a]}
            if self._public_key is not None or self._jwks is not None:
                allowed |= set(PUBLIC_KEY_ALGORITHMS)
        # Belt and braces: config validation refuses "none" already.
        self.algorithms = frozenset(a for a in allowed if a.lower() != "none")

    def verify(self, token: str) -> JwtIdentity | JwtRefusal:
        """Check ``token``'s signature and claims (see the module docstring)."""
        if len(token) > MAX_TOKEN_LENGTH:
            return JwtRefusal("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return JwtRefusal("malformed JWT")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            return JwtRefusal("JWT algorithm not allowed")
        key = self._key_for(alg, header.get("kid"))
        if isinstance(key, JwtRefusal):
            return key
        config = self.config
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=config.audience or None,
                issuer=config.issuer or None,
                # Time is checked below, against the gateway's clock.
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": True,
                    "verify_iss": True,
                    "require": ["sub", "exp"],
                },
            )
        except jwt.InvalidSignatureError:
            return JwtRefusal("bad JWT signature")
        except jwt.MissingRequiredClaimError as exc:
            return JwtRefusal(f"JWT has no {exc.claim!r} claim")
        except jwt.InvalidAudienceError:
            return JwtRefusal("wrong JWT audience")
        except jwt.InvalidIssuerError:
            return JwtRefusal("wrong JWT issuer")
        except (jwt.PyJWTError, ValueError, TypeError):
            return JwtRefusal("invalid JWT")
        return self._identity(claims)

    def _key_for(self, alg: str, kid: object) -> bytes | PublicKey | JwtRefusal:
        if alg in HMAC_ALGORITHMS:
            # Only the secret: never a public key's bytes (the RS/HS confusion).
            return self._secret if self._secret is not None else JwtRefusal("no key for HS*")
        if kid is not None and self._jwks is not None:
            if not isinstance(kid, str):
                return JwtRefusal("malformed JWT kid")
            jwk = self._jwks.get(kid)
            if jwk is not None:
                if (jwk.alg is not None and jwk.alg != alg) or not _key_fits(alg, jwk.key):
                    return JwtRefusal("the JWKS key does not serve this algorithm")
                return jwk.key
            if self._public_key is None:
                return JwtRefusal("unknown JWT kid")
        if self._public_key is None:
            return JwtRefusal("JWT has no kid" if self._jwks is not None else "no key for alg")
        if not _key_fits(alg, self._public_key):
            return JwtRefusal("the public key does not serve this algorithm")
        return self._public_key

    def _identity(self, claims: dict[str, Any]) -> JwtIdentity | JwtRefusal:
        config = self.config
        now = self.wall_clock()
        leeway = config.leeway
        sub = claims.get("sub")
        if (
            not isinstance(sub, str)
            or not 0 < len(sub) <= MAX_SUB_LENGTH
            or not sub.isprintable()
            or sub.startswith("shared:")
        ):
            return JwtRefusal("JWT sub is not a usable identity")
        times: dict[str, float] = {}
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is None and name != "exp":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                return JwtRefusal(f"JWT {name} is not a number")
            if not math.isfinite(value):
                return JwtRefusal(f"JWT {name} is not a number")
            times[name] = float(value)
        if now >= times["exp"] + leeway:
            return JwtRefusal("token expired", expired=True)
        if "nbf" in times and now + leeway < times["nbf"]:
            return JwtRefusal("token not yet valid")
        if "iat" in times and now + leeway < times["iat"]:
            return JwtRefusal("token issued in the future")
        client_type = claims.get(config.client_type_claim)
        if not isinstance(client_type, str) or not _CLIENT_TYPE.fullmatch(client_type):
            return JwtRefusal(f"JWT has no usable {config.client_type_claim!r} claim")
        user_id = claims.get(config.user_id_claim)
        if user_id is not None:
            if isinstance(user_id, int) and not isinstance(user_id, bool):
                user_id = str(user_id)
            if (
                not isinstance(user_id, str)
                or not 0 < len(user_id) <= MAX_USER_ID_LENGTH
                or not user_id.isprintable()
            ):
                return JwtRefusal(f"JWT {config.user_id_claim!r} is not a user id")
        jti = claims.get("jti")
        if jti is not None and (not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH):
            return JwtRefusal("JWT jti is not usable")
        return JwtIdentity(sub, client_type, user_id, times["exp"] + leeway, jti)


def mint(
    config: JwtConfig,
    *,
    sub: str,
    client_type: str,
    ttl: float,
    user_id: str | None = None,
    algorithm: str = "HS256",
    jti: str | None = None,
    now: float | None = None,
) -> str:
    """An HS token signed with ``config.secret`` (``python -m catsock token jwt``),
    carrying ``iss`` and ``aud`` when they are configured and a fresh ``jti``.
    Raises ``ValueError`` without a secret or for a non-HMAC ``algorithm``."""
    if not config.secret:
        raise ValueError("jwt.secret is not set (CATSOCK_JWT__SECRET)")
    if algorithm not in HMAC_ALGORITHMS:
        raise ValueError(f"{algorithm} is not an HMAC algorithm: mint those with your own key")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": sub,
        config.client_type_claim: client_type,
        "iat": issued,
        "exp": issued + max(1, math.ceil(ttl)),
        "jti": jti or uuid.uuid4().hex,
    }
    if user_id is not None:
        claims[config.user_id_claim] = user_id
    if config.issuer:
        claims["iss"] = config.issuer
    if config.audience:
        claims["aud"] = config.audience
    return jwt.encode(claims, config.secret, algorithm=algorithm)
