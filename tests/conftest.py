"""Fixtures shared by every test under tests/."""

from collections.abc import Iterator

import pytest

from tests.support.stack import Stack, running_stack


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """One private Redis and database per test module; deployables started by the tests."""
    with running_stack() as running:
        yield running
