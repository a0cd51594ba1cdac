"""A picture is drawn from the ledger at most once per PICTURE_SECONDS and process."""

from dataclasses import dataclass

import pytest

from api.console import overview


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_picture_is_drawn_once_then_shown_again_until_it_is_old(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr("api.console.overview.time.monotonic", clock)
    drawn: list[int] = []

    def draw() -> str:
        drawn.append(1)
        return f"<svg>{len(drawn)}</svg>"

    recent = overview.Recent()
    assert recent.get(("queues", "db"), draw) == "<svg>1</svg>"
    clock.now += overview.PICTURE_SECONDS - 0.1
    assert recent.get(("queues", "db"), draw) == "<svg>1</svg>"
    assert recent.get(("queues", "another db"), draw) == "<svg>2</svg>"
    clock.now += 0.2
    assert recent.get(("queues", "db"), draw) == "<svg>3</svg>"
    assert len(drawn) == 3
