"""GRPO rewards for whole streaming trajectories (docs/method.md §5), as plain functions TRL can call.

R(Y) = w_fmt · R_fmt + w_turn · R_turn + w_traj · R_traj, weights 0.1 / 0.45 / 0.45 by default
(``StreamProGRPOConfig.format_weight`` / ``turn_weight`` / ``traj_weight``).

Every reward follows TRL's reward-function signature ``f(prompts=, completions=, completion_ids=,
**columns) -> list[float | None]``: one value per completion, ``None`` = "could not score" (the
trainer then leaves the whole rollout out of its group's baseline and gives it no advantage; a
failed judge call is never a 0). Besides the RL-sample columns (``id``, ``task``, ``question``,
``question_time``, ``video``, ``duration``, ``answers``, ``rubric``), the trainer passes
``trajectory``: per completion, the list of its turns as :data:`TURN_KEYS` dicts::

    {"turn": k, "time": (k + 1) / fps, "decision": "silence" | "standby" | "response" | "invalid",
     "text": answer text ("" when silent), "closed": the model produced <|im_end|> itself,
     "forced": the turn came before the question (the loop forced silence; not a policy turn)}

Decisions (the paper is silent on these; change them here):

- **Format turns.** R_fmt averages over the *policy's* turns (from the question's turn on); forced
  silent turns before the question are not the policy's output. A turn is well formed when it is
  ``</Silence>`` alone (the loop closes silent turns itself), ``</Standby>`` alone on a three-state
  checkpoint (docs/engine.md, "Three states"), or ``</Response>`` + non-empty text that the model
  closed with ``<|im_end|>`` and that holds no further decision token. An answer
  cut off at ``max_new_tokens`` is not well formed.
- **Predictions.** Only ``response`` turns are predictions for R_turn and R_traj; an ``invalid``
  turn (first token not a decision token) is punished by R_fmt and otherwise ignored.
- **Missing rubric.** A sample whose ``rubric`` is null gets ``None`` from the LLM rubric judge
  (logged); the offline judge then scores one item per dimension.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from dataclasses import dataclass

from streampro.dataset_scripts.rubrics import RUBRIC_DIMENSIONS, validate_rubric
from streampro.metrics import (
    TURN_TAU,
    Judge,
    JudgeFailure,
    JudgeRequest,
    LLMJudge,
    make_judge,
    turn_level_rewards,
)
from streampro.metrics.f1 import score_accuracy, turn_candidates
from streampro.metrics.schema import validate_predictions, validate_reference
from streampro.modeling_streampro.processing_streampro import RESPONSE_TOKEN, SILENCE_TOKEN, STANDBY_TOKEN

logger = logging.getLogger(__name__)

TURN_KEYS = ("turn", "time", "decision", "text", "closed", "forced")
DEFAULT_WEIGHTS = {"format": 0.1, "turn": 0.45, "traj": 0.45}
RUBRIC_JUDGES = ("llm", "offline")


# --- trajectories -----------------------------------------------------------------------------


def turn_well_formed(turn: dict) -> bool:
    """The per-turn format check of R_fmt (see the module's "Format turns" decision)."""
    if turn["decision"] in ("silence", "standby"):
        return True
    if turn["decision"] != "response":
        return False
    text = turn["text"].strip()
    return bool(text) and turn["closed"] and not any(t in text for t in (SILENCE_TOKEN, RESPONSE_TOKEN, STANDBY_TOKEN))


def trajectory_predictions(trajectory: list[dict]) -> list[dict]:
    """The ``{time, text}`` predictions of a trajectory: its ``response`` turns, in time order."""
    return [{"time": t["time"], "text": t["text"].strip()} for t in trajectory if t["decision"] == "response"]


def trajectory_transcript(trajectory: list[dict]) -> str:
    """A readable one-line-per-response transcript (for LLM judges and completion logs)."""
    lines = [f"[{t['time']:g}s] {t['text'].strip()}" for t in trajectory if t["decision"] == "response"]
    return "\n".join(lines) if lines else "(the assistant stayed silent for the whole video)"


def reference_of(columns: dict, i: int) -> dict:
    """The StreamPro-F1 reference of completion ``i`` from the RL-sample columns."""
    return {
        key: columns[key][i]
        for key in ("id", "task", "question", "question_time", "video", "duration", "answers")
    }


# --- R_fmt ------------------------------------------------------------------------------------


def format_reward(
    prompts=None, completions=None, completion_ids=None, *, trajectory, **columns
) -> list[float]:
    """R_fmt: the fraction of the policy's turns that are well formed (in [0, 1]).

    A trajectory with no policy turn (question on a turn beyond the stream) cannot happen: the
    trainer rejects such samples; it would raise here.
    """
    rewards = []
    for traj in trajectory:
        policy_turns = [t for t in traj if not t["forced"]]
        if not policy_turns:
            raise ValueError("trajectory has no policy turn (the question must fall on a streamed turn)")
        rewards.append(sum(turn_well_formed(t) for t in policy_turns) / len(policy_turns))
    return rewards


# --- R_turn -----------------------------------------------------------------------------------


class TurnF1Reward:
    """R_turn of docs/method.md §5 through the metric's :func:`~streampro.metrics.turn_level_rewards`.

    One judge batch for all completions of a step; ``None`` where the judge failed (logged by the
    judge and counted here). ``judge`` is a metric judge name (``lexical``, ``embedding``, ``llm``,
    ...) with ``judge_options``, or a :class:`~streampro.metrics.Judge`.
    """

    __name__ = "turn_f1_reward"

    def __init__(self, judge: str | Judge = "lexical", tau: float = TURN_TAU, **judge_options):
        self.judge = make_judge(judge, **judge_options) if isinstance(judge, str) else judge
        self.tau = tau

    def __call__(self, prompts=None, completions=None, completion_ids=None, *, trajectory, **columns):
        predictions = [trajectory_predictions(traj) for traj in trajectory]
        references = [reference_of(columns, i) for i in range(len(trajectory))]
        rewards = turn_level_rewards(predictions, references, self.judge, self.tau)
        failed = sum(r is None for r in rewards)
        if failed:
            logger.warning(
                "turn_f1_reward: judge failed on %d of %d trajectories; they are excluded",
                failed,
                len(rewards),
            )
        return rewards


# --- R_traj -----------------------------------------------------------------------------------

RUBRIC_PROMPT_VERSION = "streampro-rubric-judge-v1"

RUBRIC_SYSTEM_PROMPT = """\
You check one rubric item against the responses an assistant gave while watching a live video. \
The assistant answers a question by speaking at chosen moments; you see the question, the \
reference answer (ground truth, with times) and the assistant's timed responses. The rubric item \
is an assertion about what a good set of responses does (granularity of steps, their temporal \
coherence, or their coverage). Decide strictly whether the assistant's responses satisfy the item.

Reply with one JSON object and nothing else: {"explanation": "<one sentence>", "score": 1 if the \
item is satisfied, else 0}"""

RUBRIC_USER_TEMPLATE = """\
{question}
Rubric item ({dimension}): {rubric}
Assistant's responses:
{prediction}"""


def _reference_text(columns: dict, i: int) -> str:
    ref = validate_reference(reference_of(columns, i))
    items = []
    for g in ref.items:
        when = f"{g.start:g}s" if g.start == g.end else f"{g.start:g}s-{g.end:g}s"
        items.append(f"[{when}] {g.text}")
    return "\n".join(items)


class LLMRubricJudge(LLMJudge):
    """An OpenAI-compatible LLM marks one rubric item pass (1) / fail (0) per request.

    Reuses :class:`~streampro.metrics.LLMJudge` whole (retries with backoff, concurrency, the
    SQLite cache, API-key handling); only the prompt, the cache key and the score range differ.
    A :class:`JudgeRequest` here carries (question + reference, transcript, rubric item).
    """

    name = "llm-rubric"

    def cache_key(self, request: JudgeRequest) -> str:
        payload = json.dumps(
            [self.model, RUBRIC_PROMPT_VERSION, request.question, request.prediction, request.reference],
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _body(self, request: JudgeRequest) -> dict:
        dimension, rubric = request.reference.split("\n", 1)
        user = RUBRIC_USER_TEMPLATE.format(
            question=request.question, dimension=dimension, rubric=rubric, prediction=request.prediction
        )
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": RUBRIC_SYSTEM_PROMPT},
                {"role": "user", "content": user},
            ],
            "temperature": 0.0,
            "max_tokens": 256,
        }

    def score_batch(self, requests):
        # LLMJudge parses an integer 0-5 and divides by 5; a mark must be exactly 0 or 1.
        out = []
        for s in super().score_batch(requests):
            if isinstance(s, JudgeFailure):
                out.append(s)
            elif round(s * 5) in (0, 1):
                out.append(float(round(s * 5)))
            else:
                out.append(JudgeFailure(f"rubric mark must be 0 or 1, the judge replied {round(s * 5)}"))
        return out

    def describe(self):
        return {**super().describe(), "name": self.name, "prompt_version": RUBRIC_PROMPT_VERSION}


@dataclass
class _Marks:
    """Soft marks per rubric dimension from a trajectory's structure (offline approximation)."""

    granularity: float
    coherence: float
    coverage: float


class OfflineRubricApproximation:
    """Offline stand-in for the LLM rubric evaluator, for CPU runs: NOT the paper's R_traj.

    It ignores each item's wording and marks it by its *dimension*, from a structural comparison
    of the responses with the ground truth (a response "covers" an item when it lies in the item's
    turn-reward window with answer accuracy >= ``pass_threshold`` under the metric ``judge``;
    each response covers at most one item, ground truth first):

    - coverage: covered items / ground-truth items;
    - coherence: adjacent ground-truth pairs both covered, in the right time order / (N_gt - 1)
      (= coverage when N_gt = 1);
    - granularity: min(N_resp, N_gt) / max(N_resp, N_gt) (steps neither over-split nor merged).

    Marks are soft (in [0, 1]) rather than pass/fail, to give a small model a denser signal.
    """

    def __init__(
        self,
        judge: str | Judge = "lexical",
        tau: float = TURN_TAU,
        pass_threshold: float = 0.5,
        **judge_options,
    ):
        self.judge = make_judge(judge, **judge_options) if isinstance(judge, str) else judge
        self.tau, self.pass_threshold = tau, pass_threshold

    def marks(self, references: list[dict], trajectories: list[list[dict]]) -> list[_Marks | JudgeFailure]:
        parsed = [
            (validate_reference(r), validate_predictions(trajectory_predictions(t)))
            for r, t in zip(references, trajectories)
        ]
        accuracy = score_accuracy(
            [(ref, preds, turn_candidates(ref, preds, self.tau)) for ref, preds in parsed], self.judge
        )
        out: list[_Marks | JudgeFailure] = []
        for (ref, preds), acc in zip(parsed, accuracy):
            failures = acc.failures()
            if failures:
                out.append(failures[0])
                continue
            used: set[int] = set()
            covered: list[float | None] = []  # per item: the covering response's time
            for gi in range(len(ref.items)):
                best = None  # (accuracy, pi)
                for (pi, g2), s in acc.scores.items():
                    if (
                        g2 == gi
                        and pi not in used
                        and s >= self.pass_threshold
                        and (best is None or s > best[0])
                    ):
                        best = (s, pi)
                if best is None:
                    covered.append(None)
                else:
                    used.add(best[1])
                    covered.append(preds[best[1]].time)
            n_gt, n_pred = len(ref.items), len(preds)
            coverage = sum(c is not None for c in covered) / n_gt
            if n_gt == 1:
                coherence = coverage
            else:
                pairs = itertools.pairwise(covered)
                coherence = sum(a is not None and b is not None and a < b for a, b in pairs) / (n_gt - 1)
            granularity = min(n_pred, n_gt) / max(n_pred, n_gt) if n_pred else 0.0
            out.append(_Marks(granularity, coherence, coverage))
        return out


class RubricReward:
    """R_traj: the mean pass mark of a sample's rubric items for a predicted trajectory.

    ``evaluator="llm"`` is the paper's evaluator (an OpenAI-compatible endpoint, one request per
    item; ``options`` = base_url, model, cache_path, max_concurrency, ...). ``evaluator="offline"``
    is :class:`OfflineRubricApproximation` (options: ``judge`` for answer accuracy, ``tau``,
    ``pass_threshold``). ``None`` for a trajectory whose sample has no rubric (llm) or where any
    item could not be judged.
    """

    __name__ = "rubric_reward"

    def __init__(self, evaluator: str = "llm", **options):
        if evaluator not in RUBRIC_JUDGES:
            raise ValueError(f"unknown rubric judge {evaluator!r}; use one of {list(RUBRIC_JUDGES)}")
        self.kind = evaluator
        self.evaluator = (
            LLMRubricJudge(**options) if evaluator == "llm" else OfflineRubricApproximation(**options)
        )

    def __call__(self, prompts=None, completions=None, completion_ids=None, *, trajectory, rubric, **columns):
        columns = {**columns, "rubric": rubric}
        n = len(trajectory)
        rubrics = [
            None if rubric[i] is None else validate_rubric(rubric[i], f"sample {columns['id'][i]} rubric")
            for i in range(n)
        ]
        missing = sum(r is None for r in rubrics)
        if self.kind == "offline":
            rewards = self._offline(columns, trajectory, rubrics)
        else:
            if missing:
                logger.warning(
                    "rubric_reward: %d of %d trajectories belong to samples without a rubric; they get no rubric "
                    "reward (write rubrics with `streampro data rubrics`)",
                    missing,
                    n,
                )
            rewards = self._llm(columns, trajectory, rubrics)
        failed = sum(r is None for r in rewards) - (0 if self.kind == "offline" else missing)
        if failed:
            logger.warning(
                "rubric_reward: the judge failed on %d of %d trajectories; they are excluded", failed, n
            )
        return rewards

    def _llm(self, columns, trajectory, rubrics) -> list[float | None]:
        requests, owners = [], []
        for i, (traj, rubric) in enumerate(zip(trajectory, rubrics)):
            if rubric is None:
                continue
            context = f"Question: {columns['question'][i]}\nReference answer:\n{_reference_text(columns, i)}"
            transcript = trajectory_transcript(traj)
            for item in rubric:
                requests.append(JudgeRequest(context, transcript, f"{item['dimension']}\n{item['rubric']}"))
                owners.append(i)
        marks: dict[int, list] = {}
        for owner, mark in zip(owners, self.evaluator.score_batch(requests) if requests else []):
            marks.setdefault(owner, []).append(mark)
        out: list[float | None] = []
        for i in range(len(trajectory)):
            got = marks.get(i)
            if got is None or any(isinstance(m, JudgeFailure) for m in got):
                out.append(None)
            else:
                out.append(sum(got) / len(got))
        return out

    def _offline(self, columns, trajectory, rubrics) -> list[float | None]:
        references = [reference_of(columns, i) for i in range(len(trajectory))]
        out: list[float | None] = []
        for marks, rubric in zip(self.evaluator.marks(references, trajectory), rubrics):
            if isinstance(marks, JudgeFailure):
                out.append(None)
                continue
            dims = [item["dimension"] for item in rubric] if rubric is not None else list(RUBRIC_DIMENSIONS)
            out.append(sum(getattr(marks, d) for d in dims) / len(dims))
        return out


# --- all three ----------------------------------------------------------------------------------


def build_reward_funcs(
    weights: dict[str, float] | None = None,
    *,
    turn_judge: str | Judge = "lexical",
    turn_judge_options: dict | None = None,
    turn_tau: float = TURN_TAU,
    rubric_judge: str = "offline",
    rubric_judge_options: dict | None = None,
) -> tuple[list, list[float]]:
    """The reward functions with a non-zero weight, in the order format, turn, traj, and their weights."""
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    unknown = set(weights) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown reward weight(s) {sorted(unknown)}; use {list(DEFAULT_WEIGHTS)}")
    funcs, used = [], []
    if weights["format"]:
        funcs.append(format_reward)
        used.append(weights["format"])
    if weights["turn"]:
        funcs.append(TurnF1Reward(turn_judge, turn_tau, **(turn_judge_options or {})))
        used.append(weights["turn"])
    if weights["traj"]:
        options = dict(rubric_judge_options or {})
        if rubric_judge == "offline":
            options.setdefault("judge", turn_judge)
            options.setdefault("tau", turn_tau)
        funcs.append(RubricReward(rubric_judge, **options))
        used.append(weights["traj"])
    if not funcs:
        raise ValueError("every reward weight is 0; at least one reward must count")
    return funcs, used


def combine_rewards(values: list[float | None], weights: list[float]) -> float | None:
    """R(Y) = Σ w_i · R_i; ``None`` if any weighted reward is ``None`` (never counted as 0)."""
    if len(values) != len(weights):
        raise ValueError(f"{len(values)} rewards for {len(weights)} weights")
    if any(v is None for v, w in zip(values, weights) if w):
        return None
    return sum(w * v for v, w in zip(values, weights) if w)
