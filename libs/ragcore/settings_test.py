"""Prod refuses API key entries that are placeholders, and says which one and how to make a real
one."""

import hashlib

import pytest
from pydantic import ValidationError

from ragcore.settings import Settings

REAL_HASH = "sha256:" + hashlib.sha256(b"a key made by the recipe").hexdigest()


@pytest.mark.parametrize(
    "entry", ["sha256:CHANGE-ME", "sha256:" + "A" * 64, "sha256:" + "0" * 63, "CHANGE-ME-admin-key"]
)
def test_prod_refuses_a_placeholder_key_naming_it_and_the_recipe(entry: str) -> None:
    # Named by the entry when hashed (no secret), by its length when plain (a plain key is one).
    with pytest.raises(ValidationError) as refused:
        Settings(environment="prod", api_keys={REAL_HASH: "query", entry: "admin"})
    message = str(refused.value)
    which = (
        repr(entry) if entry.startswith("sha256:") else f"a plain key of {len(entry)} characters"
    )
    assert which in message and "scope 'admin'" in message
    assert entry.startswith("sha256:") or entry not in message
    assert "secrets.token_urlsafe" in message and "hashlib.sha256" in message


def test_prod_accepts_hashed_and_long_plain_keys() -> None:
    settings = Settings(environment="prod", api_keys={REAL_HASH: "admin", "p" * 32: "query"})
    assert set(settings.api_keys) == {REAL_HASH, "p" * 32}


def test_dev_keeps_its_short_development_keys() -> None:
    assert "dev-admin-key" in Settings(environment="dev").api_keys


def test_prod_refuses_a_placeholder_console_secret_without_showing_it() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(environment="prod", api_keys={REAL_HASH: "admin"}, console_secret="CHANGE-ME")
    assert "RAGCORE_CONSOLE_SECRET is a placeholder" in str(refused.value)
    long = "s" * 32
    assert Settings(environment="prod", api_keys={REAL_HASH: "admin"}, console_secret=long)
