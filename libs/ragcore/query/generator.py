"""Answers from retrieved passages: an OpenAI-compatible chat endpoint, or extractive with no model.

`tokens_used` is what the chat endpoint reports (`usage.total_tokens`). The extractive answer uses
no model; its documented count is the whitespace-separated words of the query plus the answer, a
stand-in of the same order as a tokenizer's count, so usage reports stay comparable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

from ragcore.clients.vectorstore import Hit

NO_PASSAGES = "No passage in the knowledge base matches this question."
#: Sentences of the extractive answer; passages sent to the chat model (in rank order).
MAX_SENTENCES = 3
MAX_CONTEXT_PASSAGES = 8

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+", re.UNICODE)

SYSTEM_PROMPT = (
    "You answer questions using only the numbered passages given. Cite passages as [n]. "
    "If the passages do not contain the answer, say so."
)


@dataclass(frozen=True)
class Generated:
    answer: str
    tokens_used: int


class Generator(Protocol):
    def generate(self, query: str, hits: Sequence[Hit]) -> Generated: ...


def word_count(*texts: str) -> int:
    """The documented token count of the extractive answer: whitespace-separated words."""
    return sum(len(t.split()) for t in texts)


class ExtractiveGenerator:
    """The sentences of the best passages that share the most words with the query, cited [n]."""

    def generate(self, query: str, hits: Sequence[Hit]) -> Generated:
        if not hits:
            return Generated(NO_PASSAGES, word_count(query, NO_PASSAGES))
        terms = set(_WORD.findall(query.lower()))
        candidates: list[tuple[int, int, int, str]] = []  # (-overlap, rank, position, sentence)
        for rank, hit in enumerate(hits):
            for position, sentence in enumerate(s.strip() for s in _SENTENCE_END.split(hit.text)):
                if sentence:
                    overlap = len(terms & set(_WORD.findall(sentence.lower())))
                    candidates.append((-overlap, rank, position, sentence))
        chosen = sorted(c for c in candidates if c[0] < 0)[:MAX_SENTENCES]
        if not chosen:  # nothing shares a word: the best passage's opening is the best we have
            chosen = sorted(c for c in candidates if c[1] == 0)[:1]
        # Read in passage order, not score order, so the answer flows like the source.
        chosen.sort(key=lambda c: (c[1], c[2]))
        seen: set[str] = set()
        parts = []
        for _, rank, _, sentence in chosen:
            if sentence not in seen:
                seen.add(sentence)
                parts.append(f"{sentence} [{rank + 1}]")
        answer = " ".join(parts)
        return Generated(answer, word_count(query, answer))


class ChatGenerator:
    """`POST {base_url}/v1/chat/completions` with the passages as numbered context."""

    def __init__(
        self, client: httpx.Client, base_url: str, model: str, token: str | None = None
    ) -> None:
        self._client = client
        self._url = base_url.rstrip("/") + "/v1/chat/completions"
        self._model = model
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def generate(self, query: str, hits: Sequence[Hit]) -> Generated:
        if not hits:  # nothing to ground an answer in: do not pay a model to say so
            return Generated(NO_PASSAGES, word_count(query, NO_PASSAGES))
        context = "\n\n".join(
            f"[{i + 1}] {hit.text}" for i, hit in enumerate(hits[:MAX_CONTEXT_PASSAGES])
        )
        body = {
            "model": self._model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"Passages:\n{context}\n\nQuestion: {query}"},
            ],
        }
        response = self._client.post(self._url, json=body, headers=self._headers)
        response.raise_for_status()
        data = response.json()
        try:
            answer = str(data["choices"][0]["message"]["content"]).strip()
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(
                f"chat endpoint answered without choices[0].message.content: {str(data)[:200]}"
            ) from exc
        usage = data.get("usage") or {}
        tokens = usage.get("total_tokens")
        return Generated(
            answer, int(tokens) if isinstance(tokens, int) else word_count(query, answer)
        )
