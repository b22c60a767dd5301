"""How fast StreamPro-F1 scores, and how many requests the LLM judge keeps in flight.

    .venv/bin/python benchmarks/score_speed.py [--samples 10000] [--llm-requests 160]

1. Scores ``--samples`` synthetic benchmark samples (all seven tasks, 1-3 ground-truth items,
   0-4 responses each) with the offline ``lexical`` judge, validation included. Target: <= 2 s
   for 10,000 samples on the 2-core CI machine. Also times the turn-level reward on the same data.
2. Starts a fake OpenAI-compatible server on 127.0.0.1 (each reply takes ``--llm-delay`` s),
   scores ``--llm-requests`` distinct requests with the ``llm`` judge and records the peak number
   of requests in flight (target >= 8), then re-scores them to check the cache makes no calls.

The last line printed is one JSON object with all the numbers.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

WORDS = [
    "the",
    "man",
    "woman",
    "dog",
    "opens",
    "closes",
    "door",
    "fridge",
    "cuts",
    "onion",
    "fries",
    "pan",
    "walks",
    "stairs",
    "car",
    "red",
    "light",
]


def synthetic_benchmark(n: int, seed: int = 0):
    """``n`` (predictions, reference) pairs covering every task, with answers near their windows."""
    from streampro.metrics import TASKS

    rng = random.Random(seed)

    def sentence():
        return " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))

    predictions, references = [], []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        answers, anchors = [], []
        t = rng.uniform(5, 20)
        for _ in range(rng.randint(1, 3)):
            if task in ("EU", "TP", "TG"):
                start, end = t, t + rng.uniform(2, 10)
                answers.append(
                    {
                        "text": f"{start:.1f}-{end:.1f}" if task == "TG" else sentence(),
                        "start": start,
                        "end": end,
                    }
                )
                anchors.append(end)
            else:
                answers.append({"text": sentence(), "time": t})
                anchors.append(t)
            t = anchors[-1] + rng.uniform(5, 30)
        preds = []
        for _ in range(rng.randint(0, 4)):
            at = max(0.0, rng.choice(anchors) + rng.uniform(-5, 6))
            text = f"from {at - 6:.1f}s to {at:.1f}s" if task == "TG" else sentence()
            preds.append({"time": round(at), "text": text})
        references.append(
            {
                "id": f"s{i}",
                "task": task,
                "question": sentence() + "?",
                "question_time": 0.0,
                "video": f"v{i}.mp4",
                "duration": t + 10,
                "answers": answers,
            }
        )
        predictions.append(preds)
    return predictions, references


def time_lexical(n: int) -> dict:
    from streampro.metrics import compute_streampro_f1, make_judge, turn_level_reward

    predictions, references = synthetic_benchmark(n)
    judge = make_judge("lexical")
    start = time.perf_counter()
    result = compute_streampro_f1(predictions, references, judge=judge)
    f1_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for p, r in zip(predictions, references):
        turn_level_reward(p, r, judge)
    turn_seconds = time.perf_counter() - start
    print(f"StreamPro-F1, lexical judge: {n} samples in {f1_seconds:.3f} s (W-Avg {result['w_avg_f1']:.1f})")
    print(f"turn-level reward, lexical judge: {n} samples in {turn_seconds:.3f} s (one call per sample)")
    return {
        "samples": n,
        "lexical_seconds": round(f1_seconds, 4),
        "turn_reward_seconds": round(turn_seconds, 4),
    }


def time_llm(n: int, concurrency: int, delay: float) -> dict:
    from streampro.metrics import JudgeRequest, LLMJudge

    from streampro.testing import FakeOpenAI, chat_reply

    requests = [JudgeRequest("What happens?", f"answer number {i}", "the reference answer") for i in range(n)]
    reply = chat_reply('{"explanation": "ok", "score": 4}')
    with FakeOpenAI(lambda n, body: (200, reply, delay)) as server:
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "judge.sqlite"
            judge = LLMJudge(
                server.base_url,
                "fake-judge",
                cache_path=cache,
                max_concurrency=concurrency,
                show_progress=False,
            )
            start = time.perf_counter()
            scores = judge.score_batch(requests)
            seconds = time.perf_counter() - start
            failures = sum(not isinstance(s, float) for s in scores)
            calls_first = server.calls
            LLMJudge(server.base_url, "fake-judge", cache_path=cache, show_progress=False).score_batch(
                requests
            )
            cached_calls = server.calls - calls_first
        close_max = server.max_in_flight
    print(
        f"LLM judge: {n} requests, {delay * 1000:.0f} ms each, concurrency {concurrency}: {seconds:.2f} s, "
        f"max in flight {close_max}, failures {failures}, calls on cached re-run {cached_calls}"
    )
    return {
        "llm_requests": n,
        "llm_concurrency": concurrency,
        "llm_seconds": round(seconds, 3),
        "llm_max_in_flight": close_max,
        "llm_failures": failures,
        "llm_cached_rerun_calls": cached_calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--llm-requests", type=int, default=160)
    parser.add_argument("--llm-concurrency", type=int, default=16)
    parser.add_argument(
        "--llm-delay", type=float, default=0.05, help="seconds the fake server takes per reply"
    )
    args = parser.parse_args()
    report = time_lexical(args.samples)
    report.update(time_llm(args.llm_requests, args.llm_concurrency, args.llm_delay))
    report["lexical_target_seconds"] = 2.0
    report["lexical_meets_target"] = report["lexical_seconds"] <= 2.0 * args.samples / 10_000
    report["llm_meets_target"] = report["llm_max_in_flight"] >= 8
    print(json.dumps(report))


if __name__ == "__main__":
    main()
