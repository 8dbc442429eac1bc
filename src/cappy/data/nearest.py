"""Hard mismatched responses: for each answer of a template, the other answers nearest to it by sentence embedding.

The bi-encoder (``Mixture.embedding_model``, all-MiniLM-L6-v2 by default) is loaded on first use, in float32 with
the mean pooling it was trained with; vectors are cached by text for the whole build.
"""

from __future__ import annotations

from typing import Any


class NearestAnswers:
    """Nearest answers by cosine of sentence vectors. Example: ``NearestAnswers("all-minilm-l6-v2").nearest(a, 1)``"""

    def __init__(self, model: str) -> None:
        self.model = model
        self._cache: dict[str, Any] = {}  # sentence vectors of answers, by text, for the whole build
        self._encoder: Any = None

    def nearest(self, targets: list[str], k: int) -> dict[str, list[str]]:
        """For each distinct target, the other distinct targets most similar to it (cosine of the embedding
        model's sentence vectors), best first, a few more than ``k`` so that excluded ones can be skipped."""
        import numpy as np

        distinct = [t for t in dict.fromkeys(targets) if t.strip()]
        if len(distinct) < 2:
            return {}
        vecs = self.embed(distinct)
        want = min(k + 8, len(distinct) - 1)
        out: dict[str, list[str]] = {}
        for s in range(0, len(distinct), 1024):
            sims = vecs[s : s + 1024] @ vecs.T
            for i in range(sims.shape[0]):
                sims[i, s + i] = -np.inf
            top = np.argpartition(-sims, want - 1, axis=1)[:, :want]
            for i, row in enumerate(top):
                # ties broken by position so the order (and the build) is deterministic
                order = sorted(row.tolist(), key=lambda j: (-float(sims[i, j]), j))
                out[distinct[s + i]] = [distinct[j] for j in order]
        return out

    def embed(self, texts: list[str]) -> Any:
        """Unit-length float32 sentence vectors (a numpy array, one row per text), cached by text."""
        import numpy as np

        todo = [t for t in texts if t not in self._cache]
        if todo:
            if self._encoder is None:
                from sentence_transformers import SentenceTransformer

                # deferred: the model package loads torch and transformers, which only hard_mismatched builds need
                from cappy.model.checkpoint import resolve_model_path

                self._encoder = SentenceTransformer(resolve_model_path(self.model), device="cpu")
            vecs = self._encoder.encode(
                todo, batch_size=128, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
            self._cache.update(zip(todo, vecs.astype(np.float32)))
        return np.stack([self._cache[t] for t in texts])
