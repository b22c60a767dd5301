"""Trajectory rubrics for GRPO (docs/method.md §5): ``streampro data rubrics RL_SAMPLES --out OUT --endpoint URL --model NAME``.

An LLM on an OpenAI-compatible ``/chat/completions`` endpoint writes, per RL sample, 6-10 binary
rubric items from the question and the timed ground truth: assertive, sample-specific statements
in three dimensions — granularity (steps neither over-split nor merged), coherence (correct
temporal/physical order, no skipped necessary step), coverage (every essential phase present, no
hallucination). A reply must be a JSON list of ``{rubric_id, dimension, rubric}``; it is checked
by :func:`validate_rubric` (count, keys, dimensions, every dimension present, unique ids,
statements not questions) and asked again (up to ``--invalid-retries`` times) when it fails.

Output: ``OUT`` is a JSONL file of the RL samples with ``rubric`` filled, appended one line per
finished sample and flushed at once, so it is also the cache: a re-run skips the ids already in
``OUT`` and an interrupted run loses nothing. Samples that fail (endpoint down, invalid replies)
are logged, left out, and make the command exit with status 1; run it again to retry only them.
Transport: :class:`streampro.metrics.llm_client.ChatEndpoint`, the client of the metric's LLM judge
(retries with exponential backoff on timeouts, connection errors, 429 and 5xx; ``--timeout``
bounds each whole request; ``--concurrency`` requests in flight; API key from the environment
variable ``--api-key-env``, never logged or stored).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

RUBRIC_DIMENSIONS = ("granularity", "coherence", "coverage")
MIN_ITEMS, MAX_ITEMS = 6, 10

SYSTEM_PROMPT = """\
You write grading rubrics for an assistant that watches a live video and answers a question by \
speaking at the right moments. You receive the question, the task type and the ground-truth \
answers with their times. Write 6 to 10 binary rubric items that a grader can check against the \
assistant's timed responses. Each item is one assertive statement about THIS sample (name its \
concrete events, objects and order), true for a good set of responses and false for a bad one. \
Use all three dimensions:
- granularity: the responses report the steps at the right granularity, neither splitting one \
step into several reports nor merging distinct steps into one;
- coherence: the reported steps follow the correct temporal / physical order and no necessary \
step is skipped;
- coverage: every essential phase of the ground truth is reported and nothing is hallucinated.

Reply with a JSON list and nothing else: \
[{"rubric_id": 1, "dimension": "granularity" | "coherence" | "coverage", "rubric": "<statement>"}, ...]"""

USER_TEMPLATE = """\
Task: {task}
Question (asked at {question_time:g}s): {question}
Ground-truth answers:
{answers}"""

_JSON_LIST = re.compile(r"\[.*\]", re.DOTALL)


class RubricError(ValueError):
    """A rubric reply or a rubric in a file does not follow the format."""


def validate_rubric(rubric, where: str = "rubric") -> list[dict]:
    """Check a rubric (``[{rubric_id, dimension, rubric}]``, 6-10 items, all three dimensions).

    Returns it unchanged; raises :class:`RubricError` naming the item and field.
    """
    if not isinstance(rubric, list):
        raise RubricError(
            f"{where}: expected a JSON list of {{rubric_id, dimension, rubric}}, got {type(rubric).__name__}"
        )
    if not MIN_ITEMS <= len(rubric) <= MAX_ITEMS:
        raise RubricError(
            f"{where}: has {len(rubric)} items; a rubric has {MIN_ITEMS}-{MAX_ITEMS} items (docs/method.md §5)"
        )
    ids = set()
    for j, item in enumerate(rubric):
        if not isinstance(item, dict) or set(item) != {"rubric_id", "dimension", "rubric"}:
            raise RubricError(
                f"{where}[{j}]: expected exactly the keys rubric_id, dimension, rubric; got {item!r}"
            )
        if item["dimension"] not in RUBRIC_DIMENSIONS:
            raise RubricError(
                f"{where}[{j}].dimension is {item['dimension']!r}; use one of {list(RUBRIC_DIMENSIONS)}"
            )
        text = item["rubric"]
        if not isinstance(text, str) or not text.strip():
            raise RubricError(f"{where}[{j}].rubric must be a non-empty statement")
        if text.strip().endswith("?"):
            raise RubricError(f"{where}[{j}].rubric is a question ({text!r}); items are assertive statements")
        if isinstance(item["rubric_id"], bool) or not isinstance(item["rubric_id"], (str, int)):
            raise RubricError(
                f"{where}[{j}].rubric_id must be a string or integer, got {item['rubric_id']!r}"
            )
        if str(item["rubric_id"]) in ids:
            raise RubricError(f"{where}[{j}].rubric_id {item['rubric_id']!r} is repeated; ids must be unique")
        ids.add(str(item["rubric_id"]))
    absent = [d for d in RUBRIC_DIMENSIONS if d not in {item["dimension"] for item in rubric}]
    if absent:
        raise RubricError(f"{where}: no item for dimension(s) {absent}; use all of {list(RUBRIC_DIMENSIONS)}")
    return rubric


def parse_rubric_reply(text: str, where: str = "reply") -> list[dict]:
    """The validated rubric in an LLM reply (tolerates code fences and prose around the list)."""
    match = _JSON_LIST.search(text or "")
    if not match:
        raise RubricError(f"{where}: no JSON list in the reply: {text[:200]!r}")
    try:
        rubric = json.loads(match.group(0))
    except json.JSONDecodeError as e:
        raise RubricError(f"{where}: the list is not valid JSON ({e.msg}): {text[:200]!r}") from None
    return validate_rubric(rubric, where)


def _answer_lines(sample: dict) -> str:
    lines = []
    for a in sample["answers"]:
        when = f"{a['time']:g}s" if a.get("time") is not None else f"{a['start']:g}s-{a['end']:g}s"
        lines.append(f"- [{when}] {a['text']}")
    return "\n".join(lines)


def request_body(sample: dict, model: str) -> dict:
    user = USER_TEMPLATE.format(
        task=sample["task"],
        question_time=float(sample["question_time"]),
        question=sample["question"],
        answers=_answer_lines(sample),
    )
    return {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
        "temperature": 0.2,
        "max_tokens": 1024,
    }


class RubricWriter:
    """Writes one sample's rubric through the endpoint; :meth:`write` returns it or raises.

    Transport (retries, deadline, concurrency, secrets) is :class:`streampro.metrics.llm_client.ChatEndpoint`;
    an invalid rubric is asked again up to ``invalid_retries`` times, then raises :class:`RubricError`.
    """

    def __init__(self, endpoint: str, model: str, *, invalid_retries: int = 2, **endpoint_options):
        """``endpoint_options`` go to :class:`ChatEndpoint` (api_key_env, timeout, max_retries, backoff,
        max_backoff); a rubric takes longer to write than a score, so the timeout defaults to 120 s."""
        from streampro.metrics.llm_client import ChatEndpoint

        if not endpoint or not model:
            raise ValueError("rubrics need --endpoint (e.g. http://localhost:8000/v1) and --model")
        if invalid_retries < 0:
            raise ValueError(f"invalid_retries must be >= 0, got {invalid_retries}")
        self.endpoint = ChatEndpoint(endpoint, **{"timeout": 120.0, **endpoint_options})
        self.model = model
        self.invalid_retries = invalid_retries

    @property
    def calls_made(self) -> int:
        return self.endpoint.calls_made

    async def write(self, sample: dict) -> list[dict]:
        body = request_body(sample, self.model)
        error = None
        for _ in range(self.invalid_retries + 1):
            try:  # EndpointError (retries used up, a 4xx) propagates: asking again will not help
                return parse_rubric_reply(await self.endpoint.chat(body), f"sample {sample['id']}")
            except RubricError as e:
                error = e  # an invalid rubric: ask again (sampling at temperature 0.2 may differ)
        raise error


def done_ids(out: Path) -> set[str]:
    """Ids already written to ``out``; a torn last line (a crash mid-write) is cut off and redone."""
    from streampro.jsonl import iter_jsonl

    if not out.is_file():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        logger.warning("%s: cutting an incomplete last line (an interrupted write); that sample is redone", out)
        with out.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    problems: list[str] = []
    ids = {str(row["id"]) for _, row in iter_jsonl(out, errors=problems)}
    for problem in problems:
        logger.warning("%s; that sample is redone", problem)
    return ids


def write_rubrics(
    samples_path, out_path, writer: RubricWriter, *, concurrency: int = 8, progress: bool = True
) -> dict:
    """Fill the ``rubric`` of every RL sample in ``samples_path`` into ``out_path`` (append-only, resumable)."""
    from tqdm.auto import tqdm

    from streampro.jsonl import iter_jsonl

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    out = Path(out_path)
    samples, seen = [], {}
    for lineno, sample in iter_jsonl(samples_path):
        where = f"{samples_path}:{lineno}"
        missing = [k for k in ("id", "task", "question", "question_time", "answers") if k not in sample]
        if missing:
            raise ValueError(
                f"{where}: RL sample lacks {missing}; make RL samples with `streampro data build rl`"
            )
        if str(sample["id"]) in seen:
            raise ValueError(
                f"{where}: id {sample['id']!r} repeats line {seen[str(sample['id'])]}; ids must be unique"
            )
        seen[str(sample["id"])] = lineno
        samples.append(sample)
    finished = done_ids(out)
    todo = [s for s in samples if str(s["id"]) not in finished]
    stats = {"samples": len(samples), "already_done": len(samples) - len(todo), "written": 0, "failed": 0}
    logger.info(
        "rubrics: %d samples, %d already in %s, %d to write",
        len(samples),
        stats["already_done"],
        out,
        len(todo),
    )
    if not todo:
        return stats
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as f, tqdm(total=len(todo), desc="rubrics", disable=not progress) as bar:

        def on_done(sample, rubric, error):
            if error is not None:
                stats["failed"] += 1
                logger.warning("rubric for sample %s failed: %s", sample["id"], writer.endpoint.scrub(str(error)))
            else:
                f.write(json.dumps({**sample, "rubric": rubric}, ensure_ascii=False) + "\n")
                f.flush()  # finished work survives an interrupt
                stats["written"] += 1
            bar.update()

        writer.endpoint.run(todo, writer.write, on_done, concurrency=concurrency)
    return stats
