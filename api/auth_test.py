"""Key lookup: plain and hashed keys, and nothing for an unknown key or a stored hash."""

import hashlib

from api.auth import scope_of


def test_plain_key_maps_to_its_scope() -> None:
    assert scope_of("k1", {"k1": "query", "k2": "admin"}) == "query"


def test_hashed_key_matches_the_key_it_hashes() -> None:
    hashed = "sha256:" + hashlib.sha256(b"secret").hexdigest()
    assert scope_of("secret", {hashed: "sync"}) == "sync"
    assert scope_of("other", {hashed: "sync"}) is None


def test_the_stored_hash_is_not_a_key() -> None:
    hashed = "sha256:" + hashlib.sha256(b"secret").hexdigest()
    assert scope_of(hashed, {hashed: "admin"}) is None
    assert scope_of("sha256:CHANGE-ME", {"sha256:CHANGE-ME": "admin"}) is None


def test_unknown_key_has_no_scope() -> None:
    assert scope_of("nope", {"k1": "query"}) is None
