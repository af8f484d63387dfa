"""The judge of an embeddings model's results: it embeds the job's inputs
itself (``workers.embedder``, the same pooling and normalisation) and compares
each claimed vector with its own by cosine similarity. Floating-point sums
differ between devices, batch sizes and padding, so equality is too strict;
an honest vector is within :data:`MIN_COSINE` of the judge's, while a vector
of other weights, another model or other text is far below it.
"""
from __future__ import annotations

import json
from pathlib import Path

from bus.events import JobSubmitted
from bus.vectors import Vectors, cosine, pack
from verifier.verdict import Verdict
from workers.embedder import Embedder

MIN_COSINE = 0.999


class EmbeddingJudge:
    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    @classmethod
    def load(cls, path: Path) -> "EmbeddingJudge":
        return cls(Embedder.load(path, device="cpu"))

    def check(self, job: JobSubmitted, text: str, finish_reason: str) -> Verdict:
        """A text result for an embeddings model is wrong work."""
        return Verdict(False, "a text result for a job of an embeddings model",
                       json.dumps({"claimed": text[:400]}))

    def check_vectors(self, job: JobSubmitted, vectors: Vectors | None) -> Verdict:
        """Judge ``vectors`` as the embeddings of ``job.inputs``."""
        inputs = list(job.inputs or ())
        if vectors is None or vectors.count != len(inputs):
            return Verdict(False, "not one vector per input",
                           json.dumps({"inputs": len(inputs),
                                       "vectors": vectors.count if vectors else 0}))
        mine = pack(self.embedder.forward(inputs), self.embedder.dims).floats()
        if vectors.dims != self.embedder.dims:
            return Verdict(False, f"vectors of {vectors.dims} dimensions, not "
                                  f"{self.embedder.dims}", "{}")
        similarity = [cosine(a, b) for a, b in zip(vectors.floats(), mine, strict=True)]
        worst = min(range(len(similarity)), key=similarity.__getitem__)
        evidence = json.dumps({"min_cosine": round(similarity[worst], 6), "worst_input": worst,
                               "threshold": MIN_COSINE})
        if similarity[worst] >= MIN_COSINE:
            return Verdict(True, "every vector matches the judge's own embedding", evidence)
        return Verdict(False, f"vector {worst} differs from the judge's embedding "
                              f"(cosine {similarity[worst]:.4f} < {MIN_COSINE})", evidence)
