"""Tests for storage.credentials: tokens are created, listed, revoked and verified, never stored.

Every test opens a real SQLite file under pytest's tmp_path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import sqlite_utils

from storage.credentials import (
    Credential,
    CredentialError,
    create_token,
    data_version,
    generate_token,
    hash_token,
    list_tokens,
    load_active,
    revoke_token,
    verify,
)
from storage.db import iso, open_db

NOW = 1_795_000_000.25


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite_utils.Database]:
    database = open_db(tmp_path / "catsock.db")
    yield database
    database.close()


def test_generate_token_is_prefixed_random_and_urlsafe() -> None:
    tokens = {generate_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert token.startswith("cs_")
        assert len(token) == 3 + 43  # 32 random bytes in unpadded base64
        assert set(token[3:]) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_hash_token_is_sha256_hex() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()
    # Lone surrogates can arrive from a client; hashing them must not raise.
    assert len(hash_token("\ud800")) == 64


def test_create_and_list(db: sqlite_utils.Database) -> None:
    token = create_token(db, name="bot-1", client_type="BOT", user_id="u42", now=NOW)
    plain = create_token(db, name="dash.board_2", client_type="DASHBOARD", now=NOW + 1)
    assert token != plain
    assert list_tokens(db) == [
        Credential("bot-1", "BOT", "u42", hash_token(token), iso(NOW), None),
        Credential("dash.board_2", "DASHBOARD", None, hash_token(plain), iso(NOW + 1), None),
    ]


def test_plain_token_never_reaches_the_database_files(tmp_path: Path) -> None:
    path = tmp_path / "catsock.db"
    db = open_db(path)
    token = create_token(db, name="bot", client_type="BOT")
    revoke_token(db, "bot")
    db.close()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("catsock.db")]
    contents = b"".join(p.read_bytes() for p in files)
    # Finding the hash proves these are the bytes the credential was written to.
    assert hash_token(token).encode() in contents
    assert token.encode() not in contents
    assert token[3:].encode() not in contents


@pytest.mark.parametrize(
    "name", ["", "a" * 65, "has space", "slash/name", "naïve", "trailing\n", "semi;colon"]
)
def test_invalid_names_are_rejected(db: sqlite_utils.Database, name: str) -> None:
    with pytest.raises(CredentialError):
        create_token(db, name=name, client_type="BOT")
    assert list_tokens(db) == []


@pytest.mark.parametrize("client_type", ["", "bot", "9BOT", "B" * 33, "BOT-1", "BOT\n"])
def test_invalid_client_types_are_rejected(db: sqlite_utils.Database, client_type: str) -> None:
    with pytest.raises(CredentialError):
        create_token(db, name="bot", client_type=client_type)
    assert list_tokens(db) == []


def test_boundary_names_and_client_types_are_accepted(db: sqlite_utils.Database) -> None:
    create_token(db, name="a" * 64, client_type="B" * 32)
    create_token(db, name="A.b-c_9", client_type="X")
    create_token(db, name="z", client_type="BOT_2")
    assert len(list_tokens(db)) == 3


def test_duplicate_name_is_rejected_even_after_revocation(db: sqlite_utils.Database) -> None:
    token = create_token(db, name="bot", client_type="BOT", now=NOW)
    with pytest.raises(CredentialError, match="already exists"):
        create_token(db, name="bot", client_type="OTHER")
    assert revoke_token(db, "bot", now=NOW + 5)
    with pytest.raises(CredentialError, match="already exists"):
        create_token(db, name="bot", client_type="BOT")
    assert list_tokens(db) == [
        Credential("bot", "BOT", None, hash_token(token), iso(NOW), iso(NOW + 5)),
    ]


def test_revoke(db: sqlite_utils.Database) -> None:
    create_token(db, name="bot", client_type="BOT", now=NOW)
    create_token(db, name="keep", client_type="BOT", now=NOW)
    assert revoke_token(db, "bot", now=NOW + 10) is True
    assert revoke_token(db, "bot", now=NOW + 20) is False  # already revoked: time unchanged
    assert revoke_token(db, "nobody") is False
    revoked = {cred.name: cred.revoked_at for cred in list_tokens(db)}
    assert revoked == {"bot": iso(NOW + 10), "keep": None}


def test_load_active_excludes_revoked(db: sqlite_utils.Database) -> None:
    gone = create_token(db, name="gone", client_type="BOT")
    kept = create_token(db, name="kept", client_type="APP", user_id="u1")
    revoke_token(db, "gone")
    active = load_active(db)
    assert list(active) == [hash_token(kept)]
    assert active[hash_token(kept)].name == "kept"
    assert hash_token(gone) not in active


def test_verify_accepts_an_active_token(db: sqlite_utils.Database) -> None:
    token = create_token(db, name="bot", client_type="BOT", user_id="u7")
    cred = verify(load_active(db), token)
    assert cred is not None
    assert (cred.name, cred.client_type, cred.user_id) == ("bot", "BOT", "u7")


@pytest.mark.parametrize("bad", ["", "cs_", "cs_not-a-real-token", " ", "\ud800", None, 123, b"x"])
def test_verify_rejects_empty_unknown_and_non_str(db: sqlite_utils.Database, bad: object) -> None:
    create_token(db, name="bot", client_type="BOT")
    assert verify(load_active(db), cast(str, bad)) is None


def test_verify_rejects_a_revoked_token(db: sqlite_utils.Database) -> None:
    token = create_token(db, name="bot", client_type="BOT")
    before = load_active(db)
    revoke_token(db, "bot")
    assert verify(load_active(db), token) is None
    # Even a stale mapping that still holds the row, once it is marked revoked.
    stale = before[hash_token(token)]
    revoked = Credential(
        stale.name, stale.client_type, stale.user_id, stale.token_hash, stale.created_at, "x"
    )
    assert verify({revoked.token_hash: revoked}, token) is None


def test_verify_rejects_a_token_whose_hash_does_not_match_its_key(
    db: sqlite_utils.Database,
) -> None:
    token = create_token(db, name="bot", client_type="BOT")
    other = create_token(db, name="other", client_type="BOT")
    active = load_active(db)
    # A mapping keyed wrongly must not authenticate: the stored hash is compared too.
    crossed = {hash_token(token): active[hash_token(other)]}
    assert verify(crossed, token) is None


def test_data_version_moves_when_another_connection_changes_tokens(tmp_path: Path) -> None:
    gateway = open_db(tmp_path / "catsock.db")
    cli = open_db(tmp_path / "catsock.db")
    try:
        start = data_version(gateway)
        assert data_version(gateway) == start  # reading alone changes nothing
        create_token(cli, name="bot", client_type="BOT")
        after_create = data_version(gateway)
        assert after_create != start
        revoke_token(cli, "bot")
        assert data_version(gateway) != after_create
    finally:
        gateway.close()
        cli.close()
