import json
from collections.abc import Callable

import httpx
import pytest

from ragcore.clients.vectorstore import Hit
from ragcore.query.generator import (
    NO_PASSAGES,
    ChatGenerator,
    ExtractiveGenerator,
    word_count,
)


def hit(text: str, chunk: str = "c") -> Hit:
    return Hit(document_id="d", chunk_id=chunk, score=0.9, text=text, metadata={})


def test_extractive_answer_keeps_the_sentences_that_share_the_querys_words_and_cites_them() -> None:
    hits = [
        hit("Glaciers move slowly. Harbor safety depends on tides. Unrelated filler here."),
        hit("Harbor cranes need safety checks yearly. Nothing else."),
    ]
    generated = ExtractiveGenerator().generate("harbor safety", hits)
    assert (
        generated.answer
        == "Harbor safety depends on tides. [1] Harbor cranes need safety checks yearly. [2]"
    )
    assert generated.tokens_used == word_count("harbor safety", generated.answer)


def test_extractive_answer_without_passages_says_so() -> None:
    assert ExtractiveGenerator().generate("anything", []).answer == NO_PASSAGES


def test_extractive_answer_falls_back_to_the_best_passages_opening() -> None:
    generated = ExtractiveGenerator().generate(
        "zzz", [hit("First sentence. Second one."), hit("Other.")]
    )
    assert generated.answer == "First sentence. [1]"


def chat(handler: Callable[[httpx.Request], httpx.Response]) -> ChatGenerator:
    return ChatGenerator(
        httpx.Client(transport=httpx.MockTransport(handler)), "http://chat.test/", "m", token="t"
    )


def test_chat_generator_sends_numbered_passages_and_reports_the_endpoints_usage() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "choices": [{"message": {"content": " It is safe [1]. "}}],
                "usage": {"total_tokens": 42},
            },
        )

    generated = chat(handler).generate("is the harbor safe?", [hit("Harbor safety is good.")])
    assert (generated.answer, generated.tokens_used) == ("It is safe [1].", 42)
    request = seen[0]
    assert request.url == "http://chat.test/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer t"
    body = json.loads(request.content)
    assert body["model"] == "m"
    assert "[1] Harbor safety is good." in body["messages"][1]["content"]
    assert "Question: is the harbor safe?" in body["messages"][1]["content"]


def test_chat_generator_without_usage_counts_words() -> None:
    generator = chat(
        lambda _: httpx.Response(200, json={"choices": [{"message": {"content": "yes"}}]})
    )
    assert generator.generate("q w", [hit("x")]).tokens_used == 3


def test_chat_generator_raises_on_an_error_answer() -> None:
    generator = chat(lambda _: httpx.Response(503, json={"error": "busy"}))
    with pytest.raises(httpx.HTTPStatusError):
        generator.generate("q", [hit("x")])


def test_chat_generator_is_not_called_without_passages() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        raise AssertionError("no call expected")

    assert chat(handler).generate("q", []).answer == NO_PASSAGES
