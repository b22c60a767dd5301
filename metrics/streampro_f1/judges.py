"""Answer-accuracy judges that run offline: S_acc of docs/method.md §3 for a (question, predicted
answer, reference answer).

Part of the self-contained ``evaluate`` module (standard library only; ``rouge-score`` and
``wordllama`` imported where used). The package adds the LLM judge on top
(:mod:`streampro.metrics.judges`, which re-exports everything here).

Every judge has one method, ``score_batch(requests) -> list[float | JudgeFailure]``: a score in
[0, 1] per request, or a :class:`JudgeFailure` when it could not score (never a silent 0). The
metric batches all requests of a run into one call, and the GRPO rewards can do the same.

- ``exact``: normalised strings equal -> 1, else 0 (short / multiple-choice answers).
- ``contains``: the normalised reference occurs as whole words in the prediction -> 1, else 0.
- ``lexical``: token F1 (SQuAD normalisation) or ROUGE-L F-measure, already in [0, 1].
  An offline *approximation* of the paper's judge: it rewards shared words, not meaning.
- ``embedding``: cosine similarity of WordLlama sentence embeddings (a 16 MB model inside the
  ``wordllama`` wheel, loaded offline), thresholded onto the 0-5 scale by
  :data:`EMBEDDING_THRESHOLDS`, then divided by 5. Also an uncalibrated approximation.
- ``llm`` (the paper's protocol) needs an endpoint and lives in the package:
  ``streampro.metrics.make_judge("llm", base_url=..., model=...)``; pass the object as ``judge``.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# Every judge name; all but "llm" are built here (the LLM judge needs the streampro package).
JUDGES = ("exact", "contains", "lexical", "embedding", "llm")
OFFLINE_JUDGES = JUDGES[:-1]


@dataclass(frozen=True)
class JudgeRequest:
    """The three texts a judge sees."""

    question: str
    prediction: str
    reference: str


@dataclass(frozen=True)
class JudgeFailure:
    """A request the judge could not score, with the reason (for reports, never a score)."""

    reason: str


class JudgeError(RuntimeError):
    """Raised when a judge failure must stop the computation (``on_judge_failure="stop"``)."""


class Judge:
    """Base class: subclasses implement :meth:`score_batch` and set ``name``."""

    name = "judge"

    def score_batch(self, requests: list[JudgeRequest]) -> list[float | JudgeFailure]:
        raise NotImplementedError

    def describe(self) -> dict:
        """What goes into a report to say how accuracy was judged."""
        return {"name": self.name}


# --- offline string judges -------------------------------------------------------------------

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


@functools.lru_cache(maxsize=1 << 16)
def _token_counts(text: str) -> tuple[Counter, int]:
    # Cached: a reference is compared with every response near it, and responses repeat.
    tokens = normalize_answer(text).split()
    return Counter(tokens), len(tokens)


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 of the normalised texts (1.0 when both are empty)."""
    (pred, n_pred), (ref, n_ref) = _token_counts(prediction), _token_counts(reference)
    if not n_pred or not n_ref:
        return float(n_pred == n_ref)
    same = sum((pred & ref).values())
    if same == 0:
        return 0.0
    p, r = same / n_pred, same / n_ref
    return 2 * p * r / (p + r)


class ExactJudge(Judge):
    name = "exact"

    def score_batch(self, requests):
        return [float(normalize_answer(r.prediction) == normalize_answer(r.reference)) for r in requests]


class ContainsJudge(Judge):
    name = "contains"

    def score_batch(self, requests):
        out = []
        for r in requests:
            ref = normalize_answer(r.reference)
            # Pad with spaces so "b" matches the word "b", not the "b" inside "bird".
            out.append(float(bool(ref) and f" {ref} " in f" {normalize_answer(r.prediction)} "))
        return out


class LexicalJudge(Judge):
    """Token F1 (default, fast) or ROUGE-L F-measure (``rouge-score``)."""

    name = "lexical"
    METHODS = ("token_f1", "rougeL")

    def __init__(self, method: str = "token_f1"):
        if method not in self.METHODS:
            raise ValueError(f"unknown lexical method {method!r}; use one of {list(self.METHODS)}")
        self.method = method
        self._rouge = None

    def score_batch(self, requests):
        if self.method == "token_f1":
            return [token_f1(r.prediction, r.reference) for r in requests]
        if self._rouge is None:
            from rouge_score import rouge_scorer

            self._rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        return [self._rouge.score(r.reference, r.prediction)["rougeL"].fmeasure for r in requests]

    def describe(self):
        return {"name": self.name, "method": self.method}


# Cosine-similarity cut points for 1, 2, 3, 4, 5 points on the paper's 0-5 scale. Chosen by eye
# on paraphrase / unrelated pairs with WordLlama l2_supercat-256 (paraphrase ~0.7, unrelated
# ~0.05); not calibrated against the LLM judge.
EMBEDDING_THRESHOLDS = (0.25, 0.40, 0.55, 0.70, 0.85)


class EmbeddingJudge(Judge):
    """WordLlama sentence embeddings, loaded from the wheel itself (no download, ever)."""

    name = "embedding"

    def __init__(self, thresholds: tuple[float, ...] = EMBEDDING_THRESHOLDS):
        self.thresholds = tuple(thresholds)
        self._model = None

    def _load(self):
        try:
            import wordllama
        except ImportError as e:
            raise ImportError(
                "the 'embedding' judge needs wordllama: pip install wordllama (or 'streampro[judge]')"
            ) from e
        # The weights ship inside the package directory; disable_download makes a missing file
        # an error instead of a Hub download.
        package_dir = Path(wordllama.__file__).parent
        return wordllama.WordLlama.load(cache_dir=package_dir, disable_download=True)

    def similarities(self, predictions: list[str], references: list[str]) -> list[float]:
        """Cosine similarity per pair; a text with no known token (e.g. empty) has no
        embedding (WordLlama returns NaN), so it is similar only to another such text."""
        import numpy as np

        if self._model is None:
            self._model = self._load()
        with np.errstate(invalid="ignore"):
            a = self._model.embed(predictions, norm=True)
            b = self._model.embed(references, norm=True)
        a_nan, b_nan = np.isnan(a).any(axis=1), np.isnan(b).any(axis=1)
        sims = np.nan_to_num(a * b).sum(axis=1)
        return [1.0 if an and bn else 0.0 if an or bn else float(s) for s, an, bn in zip(sims, a_nan, b_nan)]

    def score_batch(self, requests):
        if not requests:
            return []
        sims = self.similarities([r.prediction for r in requests], [r.reference for r in requests])
        return [sum(s >= t for t in self.thresholds) / 5 for s in sims]

    def describe(self):
        return {"name": self.name, "model": "wordllama l2_supercat 256", "thresholds": list(self.thresholds)}


def make_judge(name: str, **options) -> Judge:
    """Build an offline judge by name; ``options`` go to its constructor (e.g. ``method="rougeL"``
    for ``lexical``). The ``llm`` judge is built by ``streampro.metrics.make_judge``."""
    judges = {"exact": ExactJudge, "contains": ContainsJudge, "lexical": LexicalJudge, "embedding": EmbeddingJudge}
    if name == "llm":
        raise ValueError(
            "the 'llm' judge needs an endpoint: build it with streampro.metrics.make_judge('llm', "
            "base_url=..., model=...) and pass the object as judge="
        )
    if name not in judges:
        raise ValueError(f"unknown judge {name!r}; use one of {list(JUDGES)} or pass a Judge object")
    return judges[name](**options)
