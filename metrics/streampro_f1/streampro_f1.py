"""StreamPro-F1 as an ``evaluate`` metric module, self-contained: this folder runs without the
``streampro`` package (a Hub copy needs only ``evaluate`` and ``datasets``).

Load it offline from the folder that holds it, from anywhere by path, or from the Hub after
``hf upload <org>/streampro_f1 metrics/streampro_f1 . --repo-type space``::

    import evaluate
    metric = evaluate.load("streampro_f1")            # working directory: metrics/
    metric = evaluate.load("path/to/metrics/streampro_f1")
    metric = evaluate.load("<org>/streampro_f1")      # the uploaded Space

The maths is plain functions in ``scoring.py`` (no ``evaluate`` needed; the package re-exports it as
:mod:`streampro.metrics`); this file declares the inputs and forwards to
:func:`~.scoring.compute_streampro_f1`.
"""

import datasets
import evaluate

# evaluate copies only the sibling files this script imports itself (it does not follow their
# imports), so every file of the module is imported here. No comment may follow an import line:
# evaluate reads "import x  # text" as "fetch x from the URL text".
from .judges import OFFLINE_JUDGES, make_judge
from .schema import FormatError, validate_reference
from .scoring import compute_streampro_f1
from .segments import parse_segment
from .tasks import TASKS

__all__ = ["OFFLINE_JUDGES", "TASKS", "FormatError", "StreamproF1", "compute_streampro_f1", "make_judge",
           "parse_segment"]

_CITATION = """\
@article{streampro2026,
  title   = {StreamPro: From Reactive Perception to Proactive Decision-Making in Streaming Video},
  journal = {arXiv preprint arXiv:2605.16381},
  year    = {2026}
}
"""

_DESCRIPTION = """\
StreamPro-F1 scores a streaming video model's timed responses against timed ground truth.
Each response (time t_p, text) is matched, prediction-first and greedily, to the first
ground-truth item whose task-specific window contains t_p. A match scores
S = S_time * S_acc, with S_time = max(0, 1 - dt / tau) (dt interval-aware for EU/TP, tau
asymmetric for RF) and S_acc from a judge (temporal IoU for TG). Each ground-truth item keeps
its best S; per sample P = sum S / N_pred, R = sum S / N_gt, F1 = 2PR / (P + R). Results are
averaged per task, per dimension (PU, TR, PA), as Avg (mean of dimensions) and W-Avg (mean over
samples), on a 0-100 scale.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one list per sample of the model's responses, each {"time": seconds, "text": str}.
    references: one reference per sample: {"id", "task" (EU|OU|AA|TP|TG|GP|RF), "question",
        "question_time", "video", "duration", "answers"}; each answer has "text" and either
        "time" (OU, AA, GP, RF) or "start" and "end" (EU, TP, TG).
    judge: how answer accuracy is scored: "exact", "contains", "lexical" (default),
        "embedding" (needs wordllama), or a judge object; the paper's LLM judge needs the
        streampro package: `streampro.metrics.make_judge("llm", base_url=..., model=...)`.
    on_judge_failure: "exclude" (default; the sample is left out and counted) or "stop".
    return_per_sample: also return per-sample precision / recall / f1 in [0, 1].
Returns:
    {TASK}_time, {TASK}_acc, {TASK}_precision, {TASK}_recall, {TASK}_f1 for each task present,
    {PU|TR|PA}_f1, avg_f1, w_avg_f1 (0-100), num_samples, excluded_samples, judge_failures,
    parse_failures, and per_sample when asked.
Examples:
    >>> import evaluate
    >>> metric = evaluate.load("streampro_f1")  # from the folder that holds streampro_f1/
    >>> reference = {"id": "s1", "task": "OU", "question": "Tell me when the door opens.",
    ...              "question_time": 0.0, "video": "v.mp4", "duration": 30.0,
    ...              "answers": [{"text": "The door is open now.", "time": 10.0}]}
    >>> result = metric.compute(predictions=[[{"time": 12.0, "text": "The door is open now."}]],
    ...                         references=[reference], judge="lexical")
    >>> round(result["OU_f1"], 1)  # S_time = 1 - 2/4 = 0.5, S_acc = 1
    50.0
"""

_FLOAT = datasets.Value("float64")
_ANSWER_TIMES = ("time", "start", "end")


def _arrow_ready(reference, index):
    """Validate one reference (clear error) and give every answer all of time/start/end.

    evaluate indexes every declared field before encoding, so an answer without "start" would
    fail with a bare KeyError; absent times become None, which the metric reads as absent.
    """
    try:
        validate_reference(reference)
    except FormatError as e:
        raise FormatError(f"references[{index}]: {e}") from None
    answers = [{"text": a["text"], **{k: a.get(k) for k in _ANSWER_TIMES}} for a in reference["answers"]]
    return {
        **{k: reference[k] for k in ("task", "question", "question_time", "video", "duration")},
        "id": str(reference["id"]),
        "answers": answers,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class StreamproF1(evaluate.Metric):
    """StreamPro-F1 (docs/method.md §3); scoring.py lists the decisions it implements (D1-D11)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List({"time": _FLOAT, "text": datasets.Value("string")}),
                    "references": {
                        "id": datasets.Value("string"),
                        "task": datasets.Value("string"),
                        "question": datasets.Value("string"),
                        "question_time": _FLOAT,
                        "video": datasets.Value("string"),
                        "duration": _FLOAT,
                        # An answer has either "time" or "start"/"end"; Arrow fills the others with None.
                        "answers": datasets.List(
                            {"text": datasets.Value("string"), "time": _FLOAT, "start": _FLOAT, "end": _FLOAT}
                        ),
                    },
                }
            ),
            reference_urls=["https://arxiv.org/abs/2605.16381"],
        )

    # The only change w.r.t. evaluate.Metric.add_batch / add: references pass through
    # _arrow_ready first.
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of samples (references validated first)."""
        if references is not None:
            references = [_arrow_ready(r, i) for i, r in enumerate(references)]
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one sample (its reference validated first)."""
        if reference is not None:
            reference = _arrow_ready(reference, 0)
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(
        self,
        predictions,
        references,
        judge="lexical",
        on_judge_failure="exclude",
        return_per_sample=False,
    ):
        return compute_streampro_f1(
            predictions,
            references,
            judge=judge,
            on_judge_failure=on_judge_failure,
            return_per_sample=return_per_sample,
        )
