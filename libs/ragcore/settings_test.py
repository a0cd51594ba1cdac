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
    assert set(settings.api.keys) == {REAL_HASH, "p" * 32}


def test_dev_keeps_its_short_development_keys() -> None:
    assert "dev-admin-key" in Settings(environment="dev").api_keys


def test_prod_refuses_a_placeholder_console_secret_without_showing_it() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(environment="prod", api_keys={REAL_HASH: "admin"}, console_secret="CHANGE-ME")
    assert "RAGCORE_CONSOLE_SECRET is a placeholder" in str(refused.value)
    long = "s" * 32
    assert Settings(environment="prod", api_keys={REAL_HASH: "admin"}, console_secret=long)


def test_with_sentinels_each_redis_url_names_every_sentinel_keeping_db_and_password() -> None:
    settings = Settings(
        redis_url="redis://:s%40cret@ignored:6379/0",
        cache_url="redis://ignored/3",
        redis_sentinels="s1:26379, s2:26380",
    )
    assert settings.redis.broker == "sentinel://:s%40cret@s1:26379/0;sentinel://:s%40cret@s2:26380/0"
    assert settings.redis.cache == "sentinel://s1:26379/3;sentinel://s2:26380/3"
    assert settings.redis.sentinel_nodes == [("s1", 26379), ("s2", 26380)]
    assert Settings(redis_sentinels="").broker == Settings().broker == Settings().redis_url


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"redis_sentinels": "s1:26379,s2"}, "'s2' is not host:port"),
        ({"redis_sentinels": "s1:99999"}, "'s1:99999' is not host:port"),
        ({"redis_sentinels": "s1:1", "broker_url": "rediss://b:6380/0"}, "must be redis:// URLs"),
    ],
)
def test_a_sentinel_setting_that_cannot_work_is_refused_saying_why(
    changes: dict[str, str], named: str
) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings(**changes)  # type: ignore[arg-type]  # str values for the fields under test
