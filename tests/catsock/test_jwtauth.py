"""catsock/jwtauth.py without a gateway: good tokens of every key kind, and every bad
token the issue lists (expired, not yet valid, wrong aud/iss, tampered, ``alg: none``,
HS256 keyed with the RS public key, unknown kid, 1 MB) refused with its reason."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs
import pytest

from catsock.config import ConfigError, JwtConfig, load_config, to_toml
from catsock.jwtauth import (
    JwtConfigError,
    JwtIdentity,
    JwtRefusal,
    JwtVerifier,
    looks_like_jwt,
    mint,
)

from .jwtkit import (
    SECRET,
    T0,
    claims,
    ec_key,
    ed_key,
    hs_with_public_key,
    public_pem,
    rsa_key,
    sign,
    tampered,
    unsigned,
    write_jwks,
    write_pem,
)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(clock: Clock | None = None, **settings: Any) -> JwtVerifier:
    return JwtVerifier(JwtConfig(**settings), wall_clock=clock or Clock())


def refused(result: JwtIdentity | JwtRefusal, why: str) -> None:
    assert isinstance(result, JwtRefusal), result
    assert why in result.detail, result.detail


# -- good tokens -----------------------------------------------------------------------


def test_a_good_hs256_token_gives_sub_type_user_expiry_and_jti() -> None:
    token = sign(claims("dash-500", user_id=500, jti="j-1", ttl=600))
    result = verifier(secret=SECRET).verify(token)
    assert result == JwtIdentity("dash-500", "DASHBOARD", "500", T0 + 600, "j-1")


def test_leeway_is_added_to_the_expiry() -> None:
    result = verifier(secret=SECRET, leeway=30).verify(sign(claims(ttl=600)))
    assert isinstance(result, JwtIdentity)
    assert result.expires_at == T0 + 630


@pytest.mark.parametrize(
    ("alg", "key"),
    [
        ("RS256", rsa_key),
        ("RS512", rsa_key),
        ("PS256", rsa_key),
        ("ES256", lambda: ec_key("P-256")),
        ("ES384", lambda: ec_key("P-384")),
        ("EdDSA", ed_key),
    ],
)
def test_good_public_key_tokens(tmp_path: Path, alg: str, key: Any) -> None:
    private = key()
    check = verifier(public_key=write_pem(tmp_path / "key.pem", private))
    result = check.verify(sign(claims("afad-1", "AFAD"), private, alg))
    assert isinstance(result, JwtIdentity), result
    assert (result.sub, result.client_type) == ("afad-1", "AFAD")


def test_jwks_picks_the_key_by_kid(tmp_path: Path) -> None:
    path = write_jwks(
        tmp_path / "jwks.json", {"r1": (rsa_key(), "RS256"), "e1": (ec_key("P-256"), None)}
    )
    check = verifier(jwks=path)
    assert isinstance(check.verify(sign(claims(), rsa_key(), "RS256", kid="r1")), JwtIdentity)
    assert isinstance(check.verify(sign(claims(), ec_key("P-256"), "ES256", kid="e1")), JwtIdentity)
    # The RSA key is in the set, but under another kid: the EC key cannot verify it.
    refused(check.verify(sign(claims(), rsa_key(), "RS256", kid="e1")), "does not serve")
    # A JWK that names its alg serves that one only.
    refused(check.verify(sign(claims(), rsa_key(), "RS512", kid="r1")), "does not serve")


def test_jwks_is_read_again_when_the_file_changes(tmp_path: Path) -> None:
    path = write_jwks(tmp_path / "jwks.json", {"old": (rsa_key(), "RS256")})
    check = verifier(jwks=path)
    token = sign(claims(), ec_key("P-256"), "ES256", kid="new")
    refused(check.verify(token), "unknown JWT kid")
    write_jwks(tmp_path / "jwks.json", {"new": (ec_key("P-256"), "ES256")})
    os.utime(path, ns=(1, 1))  # a new mtime even on a coarse clock
    assert isinstance(check.verify(token), JwtIdentity)
    # A broken file keeps the keys read before.
    Path(path).write_text("{not json")
    os.utime(path, ns=(2, 2))
    assert isinstance(check.verify(token), JwtIdentity)


# -- the bad-token list ------------------------------------------------------------------


def test_an_expired_token_is_refused_as_expired() -> None:
    clock = Clock()
    check = verifier(clock, secret=SECRET, leeway=5)
    token = sign(claims(ttl=60))
    clock.now = T0 + 64.9
    assert isinstance(check.verify(token), JwtIdentity)
    clock.now = T0 + 65
    result = check.verify(token)
    assert result == JwtRefusal("token expired", expired=True)


def test_a_token_not_yet_valid_is_refused() -> None:
    refused(verifier(secret=SECRET).verify(sign(claims(nbf=T0 + 60))), "not yet valid")
    refused(verifier(secret=SECRET).verify(sign(claims(iat=T0 + 60))), "in the future")
    # Within the leeway it passes.
    assert isinstance(
        verifier(secret=SECRET, leeway=60).verify(sign(claims(nbf=T0 + 60))), JwtIdentity
    )


def test_wrong_audience_and_issuer_are_refused() -> None:
    check = verifier(secret=SECRET, audience="catsock", issuer="https://cats.example")
    good = claims(aud="catsock", iss="https://cats.example")
    assert isinstance(check.verify(sign(good)), JwtIdentity)
    refused(check.verify(sign({**good, "aud": "other"})), "audience")
    refused(check.verify(sign({**good, "iss": "https://evil.example"})), "issuer")
    refused(check.verify(sign({k: v for k, v in good.items() if k != "aud"})), "aud")
    # No audience configured: a token meant for some audience is not for us.
    refused(verifier(secret=SECRET).verify(sign(claims(aud="elsewhere"))), "audience")


def test_a_tampered_payload_is_refused(tmp_path: Path) -> None:
    token = sign(claims(user_id=500))
    refused(verifier(secret=SECRET).verify(tampered(token, user_id=600)), "signature")
    rs = sign(claims(), rsa_key(), "RS256")
    check = verifier(public_key=write_pem(tmp_path / "key.pem", rsa_key()))
    refused(check.verify(tampered(rs, client_type="CATS")), "signature")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_never_accepted(alg: str) -> None:
    token = unsigned(claims(), alg)
    assert looks_like_jwt(token)
    refused(verifier(secret=SECRET).verify(token), "not allowed")
    # Not even when an operator lists it: the configuration refuses it first.
    with pytest.raises(ConfigError, match="never accepted"):
        load_config(environ={"CATSOCK_JWT__SECRET": SECRET, "CATSOCK_JWT__ALGORITHMS": alg})


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hs_signed_with_the_rs_public_key_is_refused(tmp_path: Path, alg: str) -> None:
    pem = public_pem(rsa_key())
    forged = hs_with_public_key(claims(), pem, alg)
    # Only a public key configured: no HS algorithm is even allowed.
    check = verifier(public_key=write_pem(tmp_path / "key.pem", rsa_key()))
    refused(check.verify(forged), "not allowed")
    # HS listed as well (with a real secret): the public key is still never its key.
    both = verifier(
        public_key=str(tmp_path / "key.pem"), secret=SECRET * 2, algorithms=[alg, "RS256"]
    )
    refused(both.verify(forged), "signature")


def test_an_unknown_kid_is_refused(tmp_path: Path) -> None:
    path = write_jwks(tmp_path / "jwks.json", {"k1": (rsa_key(), "RS256")})
    check = verifier(jwks=path)
    refused(check.verify(sign(claims(), rsa_key(), "RS256", kid="k2")), "unknown JWT kid")
    refused(check.verify(sign(claims(), rsa_key(), "RS256")), "no kid")


def test_a_1mb_token_is_refused_before_it_is_decoded() -> None:
    token = sign(claims(padding="x" * (1 << 20)))
    assert len(token) > 1 << 20
    refused(verifier(secret=SECRET).verify(token), "too long")


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ({"sub": None}, "'sub'"),
        ({"exp": None}, "'exp'"),
        ({"exp": "tomorrow"}, "exp"),
        ({"sub": ""}, "sub"),
        ({"sub": 12}, "invalid JWT"),
        ({"sub": "shared:CATS"}, "sub"),
        ({"sub": "x" * 129}, "sub"),
        ({"client_type": None}, "client_type"),
        ({"client_type": "dashboard"}, "client_type"),
        ({"user_id": True}, "user_id"),
        ({"user_id": {"id": 1}}, "user_id"),
        ({"user_id": 5.5}, "user_id"),
        ({"jti": 7}, "invalid JWT"),
    ],
)
def test_bad_claims_are_refused(payload: dict[str, Any], why: str) -> None:
    base = claims()
    for key, value in payload.items():
        if value is None:
            base.pop(key)
        else:
            base[key] = value
    refused(verifier(secret=SECRET).verify(sign(base)), why)


def test_the_claim_names_are_configurable() -> None:
    token = sign({"sub": "s", "exp": T0 + 60, "typ_of_client": "AFAD", "uid": "77"})
    check = verifier(secret=SECRET, client_type_claim="typ_of_client", user_id_claim="uid")
    assert check.verify(token) == JwtIdentity("s", "AFAD", "77", T0 + 60, None)


@pytest.mark.parametrize("token", ["", "cs_abc", "a.b", "a..c", "a.b.c.d", "a b.c.d", "é.b.c"])
def test_what_is_not_shaped_like_a_jwt(token: str) -> None:
    assert not looks_like_jwt(token)


def test_a_malformed_jwt_is_refused() -> None:
    refused(verifier(secret=SECRET).verify("abc.def.ghi"), "malformed")


def test_hs384_and_hs512_need_a_secret_as_long_as_their_hash() -> None:
    short = verifier(secret=SECRET[:32])
    assert short.algorithms == {"HS256"}
    refused(short.verify(sign(claims(), SECRET[:32] * 2, "HS512")), "not allowed")
    with pytest.raises(ConfigError, match=r"HS512 needs a jwt\.secret of at least 64"):
        load_config(
            environ={"CATSOCK_JWT__SECRET": SECRET[:40], "CATSOCK_JWT__ALGORITHMS": "HS512"}
        )


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"CATSOCK_JWT__SECRET": "short"}, "at least 32 bytes"),
        ({"CATSOCK_JWT__ALGORITHMS": "RS256"}, "RS256 needs jwt.public_key or jwt.jwks"),
        ({"CATSOCK_JWT__SECRET": SECRET, "CATSOCK_JWT__ALGORITHMS": "XS1"}, "not one of"),
        ({"CATSOCK_JWT__AUDIENCE": "catsock"}, "set jwt.secret"),
        ({"CATSOCK_JWT__SECRET": SECRET, "CATSOCK_JWT__LEEWAY": "-1"}, "leeway"),
    ],
)
def test_bad_jwt_settings_are_refused(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config(environ=env)


def test_the_secret_comes_from_the_environment_and_is_never_printed() -> None:
    config = load_config(environ={"CATSOCK_JWT__SECRET": SECRET})
    assert config.jwt.secret == SECRET
    assert config.jwt.enabled
    assert SECRET not in to_toml(config)
    assert SECRET not in repr(config)
    assert not load_config(environ={}).jwt.enabled


def test_unusable_key_files_stop_the_start(tmp_path: Path) -> None:
    with pytest.raises(JwtConfigError, match="cannot read"):
        verifier(public_key=str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(JwtConfigError, match="no PEM public key"):
        verifier(public_key=str(tmp_path / "junk.pem"))
    (tmp_path / "empty.json").write_text(json.dumps({"keys": [{"kty": "oct", "k": "AAAA"}]}))
    with pytest.raises(JwtConfigError, match="no usable"):
        verifier(jwks=str(tmp_path / "empty.json"))


def test_mint_makes_what_the_verifier_accepts() -> None:
    config = JwtConfig(secret=SECRET, issuer="cats", audience="catsock")
    token = mint(config, sub="dash-1", client_type="DASHBOARD", ttl=3600, user_id="500", now=T0)
    result = JwtVerifier(config, wall_clock=Clock()).verify(token)
    assert isinstance(result, JwtIdentity)
    assert attrs.astuple(result)[:4] == ("dash-1", "DASHBOARD", "500", T0 + 3600)
    assert result.jti
    with pytest.raises(ValueError, match="secret"):
        mint(JwtConfig(), sub="x", client_type="CATS", ttl=60)
