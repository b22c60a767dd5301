"""``streampro data rubrics``: rubric writing against a loopback OpenAI-compatible server.

Checks validation (count, dimensions, JSON), re-asking after an invalid reply, failures that are
left out (exit 1) and retried on the next run, and resuming from the append-only output.
"""

from __future__ import annotations

import json
import re

import pytest
from streampro.dataset_scripts.rubrics import RubricError, parse_rubric_reply, validate_rubric

from streampro.cli import main
from streampro.testing import FakeOpenAI, chat_reply


def rubric_for(question: str, n: int = 7) -> list[dict]:
    dims = ["granularity", "coherence", "coverage"]
    return [
        {
            "rubric_id": i + 1,
            "dimension": dims[i % 3],
            "rubric": f"The responses about '{question}' do item {i}.",
        }
        for i in range(n)
    ]


def samples(n=4):
    return [
        {
            "id": f"s{i}",
            "task": "EU",
            "question": f"Describe step by step what happens ({i}).",
            "question_time": 1.0,
            "video": f"v{i}.mp4",
            "duration": 20.0,
            "fps": 1.0,
            "system": None,
            "rubric": None,
            "answers": [
                {"text": "a cup is filled", "start": 2.0, "end": 5.0},
                {"text": "the cup is lifted", "start": 7.0, "end": 9.0},
            ],
        }
        for i in range(n)
    ]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def question_of(body) -> str:
    return body["messages"][1]["content"].split("): ", 1)[1].split("\n", 1)[0]


def run_cli(server, src, out, *extra):
    return main(
        [
            "data",
            "rubrics",
            str(src),
            "--out",
            str(out),
            "--endpoint",
            server.base_url,
            "--model",
            "writer",
            "--max-retries",
            "1",
            "--concurrency",
            "2",
            "--no-progress",
            *extra,
        ]
    )


def test_writes_valid_rubrics_and_resumes(tmp_path, capsys):
    src, out = tmp_path / "rl.jsonl", tmp_path / "rl_rubrics.jsonl"
    write(src, samples(4))
    fenced = lambda body: "Here you go:\n```json\n" + json.dumps(rubric_for(question_of(body))) + "\n```"
    with FakeOpenAI(lambda n, body: (200, chat_reply(fenced(body)), 0)) as server:
        assert run_cli(server, src, out) == 0
        assert server.calls == 4
        body = server.bodies[0]
        assert body["model"] == "writer" and "granularity" in body["messages"][0]["content"]
        assert "[2s-5s] a cup is filled" in body["messages"][1]["content"]  # the timed ground truth is sent
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["s0", "s1", "s2", "s3"]
    for r in rows:
        validate_rubric(r["rubric"])
        assert r["question"] in r["rubric"][0]["rubric"]  # each sample got its own rubric
        assert r["answers"] == samples(1)[0]["answers"]  # the rest of the sample is kept
    # A re-run with two more samples writes only those two.
    write(src, samples(6))
    with FakeOpenAI(lambda n, body: (200, chat_reply(fenced(body)), 0)) as server:
        assert run_cli(server, src, out) == 0
        assert server.calls == 2
    assert len(out.read_text().splitlines()) == 6


def test_invalid_replies_are_reasked_then_failures_are_left_out(tmp_path):
    src, out = tmp_path / "rl.jsonl", tmp_path / "out.jsonl"
    write(src, samples(3))

    def script(n, body):
        q = question_of(body)
        if "(0)" in q:  # first reply has 5 items, the re-ask is valid
            first = not any("(0)" in question_of(b) for b in server.bodies[:n])
            return 200, chat_reply(json.dumps(rubric_for(q, 5 if first else 8))), 0
        if "(1)" in q:  # always an unknown dimension
            bad = rubric_for(q)
            bad[0]["dimension"] = "style"
            return 200, chat_reply(json.dumps(bad)), 0
        return 503, {"error": "busy"}, 0  # (2): the endpoint is down

    with FakeOpenAI(script) as server:
        assert run_cli(server, src, out, "--invalid-retries", "1") == 1
        by_question = {}
        for b in server.bodies:
            by_question.setdefault(question_of(b)[-4:-1], []).append(b)
        assert len(by_question["(0)"]) == 2  # re-asked once, then valid
        assert len(by_question["(1)"]) == 2  # 1 + 1 re-ask, then given up
        assert len(by_question["(2)"]) == 2  # 1 + 1 transport retry
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["s0"] and len(rows[0]["rubric"]) == 8
    # Next run retries only the two failed samples.
    with FakeOpenAI(
        lambda n, body: (200, chat_reply(json.dumps(rubric_for(question_of(body)))), 0)
    ) as server:
        assert run_cli(server, src, out) == 0
        assert server.calls == 2
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == ["s0", "s1", "s2"]


def test_truncated_last_line_is_redone(tmp_path):
    src, out = tmp_path / "rl.jsonl", tmp_path / "out.jsonl"
    write(src, samples(2))
    out.write_text(
        json.dumps({**samples(1)[0], "rubric": rubric_for("x")}) + "\n" + '{"id": "s1", "rub',
        encoding="utf-8",
    )
    with FakeOpenAI(
        lambda n, body: (200, chat_reply(json.dumps(rubric_for(question_of(body)))), 0)
    ) as server:
        assert run_cli(server, src, out) == 0
        assert server.calls == 1


@pytest.mark.parametrize(
    "reply, match",
    [
        ("no list here", "no JSON list"),
        ("[{'rubric_id': 1}]", "not valid JSON"),
        (json.dumps(rubric_for("q", 11)), "has 11 items"),
        (json.dumps([{**r, "dimension": "coverage"} for r in rubric_for("q")]), "no item for dimension"),
        (json.dumps([{**r, "rubric": "Is it good?"} for r in rubric_for("q")]), "is a question"),
    ],
)
def test_parse_rubric_reply_rejects(reply, match):
    with pytest.raises(RubricError, match=match):
        parse_rubric_reply(reply)


def test_bad_input_file_names_the_line(tmp_path, capsys):
    src = tmp_path / "rl.jsonl"
    write(src, [samples(1)[0], {"id": "x"}])
    argv = ["data", "rubrics", str(src), "--out", str(tmp_path / "o.jsonl"), "--endpoint", "http://127.0.0.1:9/v1",
            "--model", "m"]
    assert main(argv) == 2
    assert re.search(r"^streampro data rubrics: error: \S*rl.jsonl:2: RL sample lacks .+ — ", capsys.readouterr().err, re.M)
