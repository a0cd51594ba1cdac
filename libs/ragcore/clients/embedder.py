"""Text → vector, in the space of the chunks in Qdrant.

`HashingEmbedder` needs no model: a signed feature-hashing bag of words (unigrams and bigrams),
L2-normalised, so texts that share words score high under cosine similarity. The Ingest stand-in
embeds its corpus with it, which makes offline retrieval meaningful. `OpenAIEmbedder` calls any
OpenAI-compatible `POST /v1/embeddings` (Ingest's, SPEC §5, or another).
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

import httpx
import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)


class Embedder(Protocol):
    def embed(self, texts: list[str]) -> list[list[float]]: ...


class HashingEmbedder:
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def _vector(self, text: str) -> np.ndarray:
        words = _WORD.findall(text.lower())
        features = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
        vec = np.zeros(self.dim, dtype=np.float32)
        for feature in features:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % self.dim
            vec[bucket] += 1.0 if digest[4] & 1 else -1.0
        norm = float(np.linalg.norm(vec))
        if norm == 0.0:
            vec[0] = 1.0  # an empty text still needs a valid (non-zero) vector for cosine distance
            return vec
        return vec / norm

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t).tolist() for t in texts]


class OpenAIEmbedder:
    def __init__(
        self, client: httpx.Client, base_url: str, model: str, token: str | None = None
    ) -> None:
        self._client = client
        self._url = base_url.rstrip("/") + "/v1/embeddings"
        self._model = model
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def embed(self, texts: list[str]) -> list[list[float]]:
        response = self._client.post(
            self._url, json={"model": self._model, "input": texts}, headers=self._headers
        )
        response.raise_for_status()
        data = sorted(response.json()["data"], key=lambda d: d["index"])
        return [d["embedding"] for d in data]
