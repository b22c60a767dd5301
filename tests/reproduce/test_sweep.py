"""``streampro reproduce --sweep FIELD=V1,V2,...``: one run per level, one table and one plot (docs/reproduce.md)."""

from __future__ import annotations

import json

import pytest

from streampro.cli import main
from streampro.reproduce import load_recipe
from streampro.reproduce.sweep import format_sweep, parse_sweep, plot_sweep


@pytest.mark.slow
def test_quick_sweep_of_the_silence_factor_runs_every_level_and_resumes(tmp_path, capsys):
    """The quick recipe without GRPO at two levels, one process: the CI-sized version of the imbalance sweep."""
    out = tmp_path / "sweep"
    argv = ["reproduce", "--quick", "--set", "grpo_steps=0", "--sweep", "silence_factor=1,2", "--out", str(out)]
    assert main(argv) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["field"] == "silence_factor" and sweep["label"] == "seed 0, quick, grpo-steps 0"
    assert [lv["value"] for lv in sweep["levels"]] == [1.0, 2.0]
    one, two = sweep["levels"]
    # The same clips in longer streams: the same response turns, twice the silent turns from the question on.
    assert two["train"]["response_turns"] == one["train"]["response_turns"] > 0
    assert two["train"]["silence_turns_from_question"] == pytest.approx(
        2 * one["train"]["silence_turns_from_question"], rel=0.05)
    assert two["train"]["silence_per_response"] == pytest.approx(2 * one["train"]["silence_per_response"], rel=0.05)
    for level, value in zip(sweep["levels"], ("1", "2")):
        run = out / f"silence_factor-{value}"
        assert load_recipe(run / "recipe.yaml").silence_factor == float(value)
        changed = {"grpo_steps": 0, **({"silence_factor": 2.0} if value == "2" else {})}  # 1.0 is quick's own
        assert json.loads((run / "run.json").read_text())["changed"] == changed
        assert not (run / "models" / "grpo").exists()  # grpo_steps 0: the three SFT models only
        assert sorted(level["test"]) == ["sft-cb_stream", "sft-ce", "sft-focal"]
        pairs = [(d["a"], d["b"]) for d in level["differences"]]
        assert pairs == [("sft-cb_stream", "sft-focal"), ("sft-focal", "sft-ce"), ("sft-cb_stream", "sft-ce")]
        for m, (low, high) in level["w_avg_interval"].items():
            assert low - 1e-9 <= level["test"][m]["w_avg_f1"] <= high + 1e-9
        assert level["shuffled"]["sft-ce"]["num_samples"] == 7 and "w_avg_f1" in level["baseline"]
        held = [json.loads(x) for x in (run / "data" / "raw" / "test.jsonl").read_text().splitlines()]
        assert all(("holds" in s["meta"]) == (value != "1") for s in held)
    # Level 2 starts SFT from level 1's start model: its stages before SFT were copied, not run again.
    first, second = out / "silence_factor-1", out / "silence_factor-2"
    for name in ("init", "captions", "control-first"):
        assert (second / "models" / name / "model.safetensors").read_bytes() == \
               (first / "models" / name / "model.safetensors").read_bytes()
    assert json.loads((second / "start_shared.json").read_text())["from"] == str(first)
    assert "control-first" not in json.loads((second / "timings.json").read_text())
    assert (second / "models" / "sft-ce" / "start.txt").read_text().strip() == "control-first"
    assert two["start_shared_from"] == str(first) and one["start_shared_from"] is None
    table = (out / "sweep.md").read_text()
    assert table.strip() in capsys.readouterr().out
    assert "| 1 | 1 : " in table and "| 2 | 1 : " in table and "| 2 | CB-Stream |" in table
    assert (out / "plots" / "sweep_w_avg.png").stat().st_size > 0
    # Run again: every level is resumed, nothing is trained or evaluated twice.
    timings = [(out / f"silence_factor-{v}" / "timings.json").read_text() for v in ("1", "2")]
    assert main(argv) == 0
    assert [(out / f"silence_factor-{v}" / "timings.json").read_text() for v in ("1", "2")] == timings
    assert (out / "sweep.md").read_text() == table


@pytest.mark.parametrize(("argv", "message"), [
    (["--sweep", "silence_factr=1,2"], "--sweep silence_factr=1,2: expected FIELD=V1,V2,... with a recipe field"),
    (["--sweep", "silence_factor=1"], "needs at least two different values"),
    (["--sweep", "silence_factor=1,1.0"], "needs at least two different values"),
    (["--sweep", "model_sizes=1,2"], "expected FIELD=V1,V2,... with a recipe field"),
    (["--sweep", "silence_factor=1,0.5"], "silence_factor must be in [1, 50], got 0.5"),
    (["--sweep", "silence_factor=1,2", "--install-assets"], "--install-assets with --sweep"),
])
def test_a_bad_sweep_is_one_error_line_before_anything_is_written(tmp_path, capsys, argv, message):
    assert main(["reproduce", "--quick", "--out", str(tmp_path / "sweep"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("streampro reproduce: error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "sweep").exists()


def test_parse_sweep_keeps_the_values_as_written():
    assert parse_sweep("silence_factor=1, 3.5,10.5") == ("silence_factor", ["1", "3.5", "10.5"])
    assert parse_sweep("sft_steps=100,200") == ("sft_steps", ["100", "200"])


def _level(value: float, ratio: float, ce: float, cb: float) -> dict:
    models = {"sft-ce": ce, "sft-focal": (ce + cb) / 2, "sft-cb_stream": cb}
    diffs = [("sft-cb_stream", "sft-focal", cb - models["sft-focal"]), ("sft-focal", "sft-ce", models["sft-focal"] - ce),
             ("sft-cb_stream", "sft-ce", cb - ce)]
    return {
        "value": value,
        "train": {"records": 10, "response_turns": 10, "silence_turns_from_question": int(10 * ratio),
                  "silence_per_response": ratio, "silence_per_response_all_turns": ratio + 2},
        "baseline": {"w_avg_f1": 7.0, "EU_f1": 4.0},
        "test": {m: {"w_avg_f1": v, "EU_f1": v} for m, v in models.items()},
        "shuffled": {m: {"w_avg_f1": 5.0, "EU_f1": 1.0} for m in models},
        "w_avg_interval": {m: [v - 4, v + 4] for m, v in models.items()},
        "differences": [{"a": a, "b": b, "difference": d, "low": d - 3, "high": d + 3} for a, b, d in diffs],
        "validation_w_avg_f1": {m: v - 1 for m, v in models.items()},
        "works": {m: {"EU": v > 20} for m, v in models.items()},
        "timings_s": {"data": 1.0, "sft-ce": 2.0},
        "decisions": {**{m: {"auc": v / 40, "auc_interval": [v / 40 - 0.1, v / 40 + 0.1], "responses_per_clip": v / 10}
                         for m, v in models.items()},
                      "differences": [{"a": "sft-cb_stream", "b": "sft-ce", "difference": (cb - ce) / 40,
                                       "low": (cb - ce) / 40 - 0.05, "high": (cb - ce) / 40 + 0.05}]},
        "answers_per_clip": 1.6,
    }


def test_the_table_and_plot_of_a_sweep(tmp_path):
    sweep = {"field": "silence_factor", "seed": 0, "label": "seed 0, imbalance",
             "levels": [_level(1.0, 9.6, 30.0, 20.0), _level(10.5, 100.8, 10.0, 25.0)]}
    table = format_sweep(sweep)
    assert ("| 1 | 1 : 9.6 (1 : 11.6) | 7.0 | 30.0 [26.0, 34.0] | 25.0 [21.0, 29.0] | 20.0 [16.0, 24.0] | "
            "-5.0 [-8.0, -2.0] | -5.0 [-8.0, -2.0] | -10.0 [-13.0, -7.0] |") in table
    assert "| 10.5 | 1 : 100.8 (1 : 102.8) |" in table and "+15.0 [+12.0, +18.0] |" in table
    assert "| 10.5 | CB-Stream | 25.0 / 1.0 ✓ | 25.0 | 1 of 1 |" in table
    assert "| 1 | 5.0 | 5.0 | 5.0 | 29.0 | 24.0 | 19.0 |" in table  # shuffled, then validation
    assert ("| 10.5 | 0.25 [0.15, 0.35] | 0.44 [0.34, 0.54] | 0.62 [0.53, 0.72] | +0.38 [+0.33, +0.42] | 1.60 | "
            "1.00 | 1.75 | 2.50 |") in table  # decision AUC, CB-Stream − CE, answers and responses per clip
    plot_sweep(sweep, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
