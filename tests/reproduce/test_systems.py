"""``streampro reproduce --systems``: StreamPro, Streamo, StreamBridge, the decision tree and the fixed-time
baseline on one run's clips, budget and seed (docs/reproduce.md, "Systems on the same clips")."""

from __future__ import annotations

import json

import pytest
from streampro.metrics import TASKS

from streampro.cli import main
from streampro.reproduce.systems import format_systems, plot_systems

KEYS = ["baseline", "streampro", "streampro-final", "streamo", "streambridge", "decision-tree"]


def _json(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def quick_systems(tmp_path_factory):
    """The quick run and its systems comparison, once for the module (two worker processes)."""
    out = tmp_path_factory.mktemp("systems") / "run"
    assert main(["reproduce", "--out", str(out), "--quick", "--systems", "--jobs", "2"]) == 0
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the fixture counts here: about 2 min on 2 idle cores, 10 on a loaded machine
def test_quick_systems_compare_every_system_on_the_runs_clips(quick_systems):
    out = quick_systems
    report, results = _json(out / "systems.json"), _json(out / "results.json")
    systems = {s["key"]: s for s in report["systems"]}
    assert [s["key"] for s in report["systems"]] == KEYS
    assert systems["streampro-final"]["folder"] == report["final_model"] == results["final_model"]
    assert systems["baseline"]["test"] == results["rows"]["fixed-time baseline"]
    for key, s in systems.items():
        low, high = s["w_avg_interval"]
        assert low - 1e-9 <= s["test"]["w_avg_f1"] <= high + 1e-9, key
        if key == "baseline":
            continue
        # Every number is the evaluation's own report of that folder (exact judge, the run's benchmark files).
        folder = out / "eval" / s["folder"]
        assert s["test"] == _json(folder / "test" / "report.json")["results"], key
        assert s["shuffled"] == _json(folder / "test-shuffled" / "report.json")["results"], key
        assert s["validation_w_avg_f1"] == _json(folder / "validation" / "report.json")["results"]["w_avg_f1"], key
        assert s["control_f1"] == _json(folder / "control_test" / "report.json")["results"]["OU_f1"], key
        assert s["test"]["num_samples"] == len(TASKS) and set(s["works"]) == set(TASKS), key
        config = _json(folder / "test-shuffled" / "run_config.json")
        assert config["judge"]["name"] == "exact" and config["shuffle_frames"] == 0, key
        assert config["benchmark"] == str((out / "data" / "bench" / "test.jsonl").resolve()), key
        predictions = [json.loads(x) for x in (folder / "test" / "predictions.jsonl").read_text().splitlines()]
        assert s["per_clip"]["responses"] == pytest.approx(sum(len(r["predictions"]) for r in predictions) / len(TASKS))
    # Which model and protocol each system ran: the two offline protocols answer with sft-cb_stream.
    configs = {k: _json(out / "eval" / systems[k]["folder"] / "test" / "run_config.json")
               for k in ("streamo", "streambridge", "decision-tree")}
    assert configs["streamo"]["protocol"] == "streampro"
    assert configs["streamo"]["model"] == str((out / "models" / "sft-streamo").resolve())
    assert configs["streambridge"]["protocol"] == "activation"
    assert configs["streambridge"]["activation_model"] == str((out / "models" / "activation").resolve())
    assert configs["decision-tree"]["protocol"] == "decision-tree"
    for k in ("streambridge", "decision-tree"):
        assert configs[k]["model"] == str((out / "models" / "sft-cb_stream").resolve())
    # Paired differences against StreamPro on the same clips.
    assert [d["a"] for d in report["differences"]] == [k for k in KEYS if k != "streampro"]
    for d in report["differences"]:
        gap = systems[d["a"]]["test"]["w_avg_f1"] - systems["streampro"]["test"]["w_avg_f1"]
        assert d["b"] == "streampro" and d["difference"] == pytest.approx(gap)
        assert d["low"] <= d["difference"] + 1e-9 and d["difference"] <= d["high"] + 1e-9
    # One start, one budget: Streamo and the activation model start where every SFT loss starts, for as many steps.
    assert report["budget"]["start"] == {"sft-cb_stream": "control-first", "sft-streamo": "control-first",
                                         "activation": "control-first"}
    for name in ("sft-streamo", "activation"):
        assert _json(out / "models" / name / "log_history.json")[-1]["step"] == report["budget"]["steps"] == 3
    assert _json(out / "models" / "activation" / "config.json")["model_type"] == "streampro_activation"
    streamo = _json(out / "models" / "sft-streamo" / "config.json")
    assert streamo["standby_token_id"] is not None  # three states
    assert _json(out / "models" / "sft-cb_stream" / "config.json").get("standby_token_id") is None  # two
    # Streamo trains on the SFT losses' records, in their order, each with its standby turns.
    sft = [json.loads(x) for x in (out / "data" / "sft" / "train.jsonl").read_text().splitlines()]
    streamo_train = [json.loads(x) for x in (out / "data" / "sft" / "streamo_train.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "standby"} for r in streamo_train] == \
           [{k: v for k, v in r.items() if k != "standby"} for r in sft]
    assert all("standby" in r for r in streamo_train) and any(r["standby"] for r in streamo_train)
    timings = _json(out / "timings.json")
    assert {"sft-streamo", "activation", "eval sft-streamo test", "eval streambridge test-shuffled",
            "eval decision-tree control_test"} <= set(timings)
    assert set(report["timings_s"]) <= set(timings) and "sft-cb_stream" not in report["timings_s"]
    table = (out / "systems.md").read_text()
    for s in report["systems"]:
        assert f"| {s['name']} | {s['how']} |" in table
    assert "| Streamo − StreamPro |" in table
    assert (out / "plots" / "systems.png").stat().st_size > 0


@pytest.mark.slow
def test_quick_systems_resume_without_running_a_stage(quick_systems, capsys):
    out = quick_systems
    before = {name: (out / name).read_text() for name in ("timings.json", "systems.md", "systems.json")}
    capsys.readouterr()
    assert main(["reproduce", "--out", str(out), "--quick", "--systems"]) == 0
    assert {name: (out / name).read_text() for name in before} == before  # nothing re-ran, the same tables
    printed = capsys.readouterr().out
    assert before["systems.md"].strip() in printed and "systems: " in printed


def _system(key: str, name: str, w_avg: float, interval, shuffled: float | None, validation: float | None,
            f1: dict, works: dict | None, responses: float | None) -> dict:
    return {"key": key, "name": name, "folder": None if key == "baseline" else key, "how": f"how {key}",
            "test": {"w_avg_f1": w_avg, **{f"{t}_f1": v for t, v in f1.items()}},
            "shuffled": None if shuffled is None else {"w_avg_f1": shuffled, **{f"{t}_f1": 0.0 for t in f1}},
            "validation_w_avg_f1": validation, "w_avg_interval": list(interval), "works": works,
            "control_f1": 80.0 if key != "baseline" else 4.0, "control_f1_shuffled": None if key == "baseline" else 20.0,
            "per_clip": None if responses is None else {"responses": responses,
                                                        "decisions": {"silence": 20.0, "response": responses}}}


def _hand_made_report() -> dict:
    f1 = {t: 0.0 for t in TASKS}
    systems = [
        _system("baseline", "fixed-time baseline", 7.5, (5.0, 10.0), None, None, {**f1, "AA": 30.0}, None, None),
        _system("streampro", "StreamPro", 40.0, (35.0, 45.0), 10.0, 41.0, {**f1, "AA": 100.0, "GP": 60.0},
                {**{t: False for t in TASKS}, "AA": True, "GP": True}, 1.5),
        _system("streamo", "Streamo", 38.0, (33.0, 43.5), 12.25, 39.0, {**f1, "AA": 90.0}, {t: False for t in TASKS}, 2.0),
    ]
    return {"settings": {"recipe_file": "recipes/reproduce/default.yaml", "seed": 1, "changed": {"sft_steps": 500}},
            "final_model": "grpo", "systems": systems,
            "differences": [{"a": "baseline", "b": "streampro", "difference": -32.5, "low": -37.0, "high": -28.0},
                            {"a": "streamo", "b": "streampro", "difference": -2.0, "low": -5.0, "high": 1.04}],
            "budget": {"start": {"sft-cb_stream": "control-first"}, "steps": 1000, "batch": 4, "lr": 1e-3,
                       "warmup": 20, "seed": 1,
                       "activation": {"positive_percent": 20.0, "window_frames": 16, "pos_weight": 5.0}},
            "timings_s": {"sft-streamo": 612.5, "activation": 300.0}}


def test_systems_table_formatting(tmp_path):
    table = format_systems(_hand_made_report())
    lines = table.splitlines()
    assert lines[0] == "# Systems on the same clips (StreamPro-Synth test split, exact judge, ×100)"
    assert ("Run: seed 1, sft-steps 500. Every trained system starts from `control-first` with 1000 steps of batch 4 "
            "at learning rate 0.001, seed 1;") in table
    assert "| fixed-time baseline | how baseline | 7.5 [5.0, 10.0] | – | – | – | – |" in lines
    assert "| StreamPro | how streampro | 40.0 [35.0, 45.0] | 10.0 | 41.0 | 1.50 | 2 of 7 |" in lines
    assert "| Streamo | how streamo | 38.0 [33.0, 43.5] | 12.2 | 39.0 | 2.00 | 0 of 7 |" in lines
    assert "| fixed-time baseline − StreamPro | -32.5 | [-37.0, -28.0] |" in lines
    assert "| Streamo − StreamPro | -2.0 | [-5.0, +1.0] |" in lines
    per_task = next(x for x in lines if x.startswith("| StreamPro | 0.0 / 0.0"))
    assert per_task.split(" | ")[3] == "100.0 / 0.0 ✓" and per_task.endswith("| 40.0 |")  # AA, the third task
    assert next(x for x in lines if x.startswith("| fixed-time baseline | 0.0 |")).endswith("| 7.5 |")  # no shuffle
    assert ("Control task \"the screen changes colour\" (scored as OU; not in W-Avg): fixed-time baseline 4.0, "
            "StreamPro 80.0 / 20.0, Streamo 80.0 / 20.0 (plain / shuffled).") in table
    assert "StreamPro: silence 20.0, response 1.5; Streamo: silence 20.0, response 2.0." in table
    assert "Activation model: positive_percent 20, window_frames 16, pos_weight 5" in table
    assert "Final model (chosen on validation): **grpo**." in table
    assert "Stage wall times (s): sft-streamo 612.5, activation 300" in table
    plot_systems(_hand_made_report(), tmp_path / "systems.png")
    assert (tmp_path / "systems.png").read_bytes()[:4] == b"\x89PNG"


def test_systems_is_refused_with_sweep_or_compare(tmp_path, capsys):
    argv = ["reproduce", "--quick", "--systems", "--sweep", "silence_factor=1,2", "--out", str(tmp_path / "s")]
    assert main(argv) == 2
    assert "--systems with --sweep" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before anything is written
    assert main(["reproduce", "--systems", "--compare", str(tmp_path)]) == 2
    assert "--systems with --compare" in capsys.readouterr().err


def test_decision_tree_runs_a_streampro_checkpoint_as_a_plain_model(tiny_dir):
    """The comparison's decision tree asks the run's StreamPro model: its </Response> ends every prompt."""
    from streampro.evaluation.protocols import DecisionTreeProtocol, build_protocol
    from streampro.testing.media import random_frames

    protocol = build_protocol("decision-tree", tiny_dir, device="cpu", fps=1.0, window_turns=2, max_new_tokens=2,
                              response_threshold=None)
    assert isinstance(protocol, DecisionTreeProtocol) and protocol.answer_prefix == "</Response>"
    frames = random_frames(3, size=56)
    tokenizer = protocol.processor.tokenizer
    ids = protocol._inputs([(0, frames[0])], "Question: what moves?")["input_ids"][0]
    assert int(ids[-1]) == tokenizer.convert_tokens_to_ids("</Response>")
    out = protocol.run(frames, "Tell me when the square moves.", 2.0)  # turn 1
    assert [e["d"] for e in out.events][0] == "before_question" and len(out.events) == 3
    assert all(0.0 <= e["p"] <= 1.0 for e in out.events[1:])
