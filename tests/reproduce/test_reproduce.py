"""``streampro reproduce --quick`` end to end: data, three SFT losses, GRPO, evaluations, controls, table."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from streampro.metrics import TASKS

from streampro.cli import main


@pytest.mark.slow
def test_quick_reproduce_writes_every_row_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["reproduce", "--out", str(out), "--quick", "--jobs", "2"]) == 0  # stages in 2 processes
    summary = json.loads((out / "results.json").read_text())
    models = ["sft-ce", "sft-focal", "sft-cb_stream", "grpo", "grpo-best"]
    expected = ["fixed-time baseline", *models, *(f"{m} (shuffled frames)" for m in models)]
    assert sorted(summary["rows"]) == sorted(expected)
    for name, row in summary["rows"].items():
        assert row["num_samples"] == len(TASKS), name  # one quick test clip per task, none errored
        assert {f"{t}_f1" for t in TASKS} <= set(row) and row["w_avg_f1"] is not None, name
    assert summary["final_model"] in models  # chosen on validation
    # grpo starts from CB-Stream (the paper's recipe), grpo-best from the SFT model best on validation.
    val = {m: json.loads((out / "eval" / m / "validation" / "report.json").read_text())["results"]["w_avg_f1"] or 0.0
           for m in models[:3]}
    assert summary["grpo_starts"] == {"grpo": "sft-cb_stream", "grpo-best": max(models[:3], key=lambda m: (val[m], -models.index(m)))}
    assert set(summary["works"]) == set(models) and all(set(w) == set(TASKS) for w in summary["works"].values())
    # The baseline's constant time and answer come from the validation split.
    validation = [json.loads(line) for line in (out / "data" / "bench" / "validation.jsonl").read_text().splitlines()]
    for task, choice in summary["baseline_choice"].items():
        assert choice["answer"] in {a["text"] for r in validation if r["task"] == task for a in r["answers"]}
    # The control task is reported apart: plain and shuffled F1 per model and its own fixed-time baseline.
    assert sorted(summary["control_f1"]) == sorted(expected)
    control_refs = (out / "data" / "bench" / "control_test.jsonl").read_text()
    assert "synth-CC-" in control_refs and "synth-CC-" not in (out / "data" / "bench" / "test.jsonl").read_text()
    # Bootstrap intervals of each model's test W-Avg, and the paper's claims as paired differences.
    intervals = summary["test_intervals"]
    for m in models:
        low, high = intervals["w_avg"][m]
        assert low - 1e-9 <= summary["rows"][m]["w_avg_f1"] <= high + 1e-9, m
    pairs = [(d["a"], d["b"]) for d in intervals["differences"]]
    assert pairs == [("sft-cb_stream", "sft-focal"), ("sft-focal", "sft-ce"), ("sft-cb_stream", "sft-ce"),
                     *summary["grpo_starts"].items()]
    for d in intervals["differences"]:
        gap = summary["rows"][d["a"]]["w_avg_f1"] - summary["rows"][d["b"]]["w_avg_f1"]
        assert d["difference"] == pytest.approx(gap) and d["low"] <= d["difference"] + 1e-9 <= d["high"] + 2e-9
    table = (out / "results.md").read_text()
    assert "## Control task" in table and "## How much of this is the test clips" in table
    for name in expected:
        assert f"| {name}" in table
    assert (out / "plots" / "reproduce_task_f1.png").stat().st_size > 0
    assert (out / "plots" / "reproduce_timelines.png").stat().st_size > 0
    # The default recipe: captions, then the control-first warm-up, then every loss from there.
    assert (out / "models" / "control-first" / "start.txt").read_text().strip() == "captions"
    assert all((out / "models" / m / "start.txt").read_text().strip() == "control-first" for m in models[:3])
    assert summary["caption_validation_f1"] is not None and summary["motion_caption_validation_f1"] is not None
    # Every model was trained and saved; each evaluation used the exact judge.
    for m in models:
        assert (out / "models" / m / "model.safetensors").is_file()
        config = json.loads((out / "eval" / m / "test-shuffled" / "run_config.json").read_text())
        assert config["judge"]["name"] == "exact" and config["shuffle_frames"] == 0
    # A second run skips every stage and writes the same table.
    timings = json.loads((out / "timings.json").read_text())
    capsys.readouterr()
    assert main(["reproduce", "--out", str(out), "--quick"]) == 0
    assert json.loads((out / "timings.json").read_text()) == timings  # nothing re-ran
    assert (out / "results.md").read_text() == table
    # Another budget in the same folder is refused, not mixed in.
    with pytest.raises(ValueError, match="other settings"):
        main(["reproduce", "--out", str(out), "--quick", "--sft-steps", "5"])
    # Shipping the chosen model: a loadable copy, its provenance (run label, whole budget) and demo clips.
    from streampro import reproduce as R

    assets = tmp_path / "assets"
    R.install_assets(R.Run(out, R.QUICK, seed=0, quick=True), summary, assets=assets)
    prov = json.loads((assets / "streampro-tiny-synth" / "PROVENANCE.json").read_text())
    assert prov["source"].startswith(f"streampro reproduce ({summary['final_model']}; seed 0)")
    assert prov["settings"]["budget"] == json.loads((out / "settings.json").read_text())["budget"]
    assert prov["test_w_avg_f1"] == summary["rows"][summary["final_model"]]["w_avg_f1"]
    assert (assets / "streampro-tiny-synth" / "model.safetensors").is_file()
    demo = [json.loads(line) for line in (assets / "demo" / "references.jsonl").read_text().splitlines()]
    final = summary["rows"][summary["final_model"]]
    shown = sorted((t for t in TASKS if final[f"{t}_f1"] > 0), key=lambda t: -final[f"{t}_f1"])[:5]
    assert [ref["task"] for ref in demo] == shown  # the tasks it does best; none it fails
    assert all((assets / "demo" / ref["video"]).is_file() for ref in demo)


def _summary(seed: int, ce: float, cb: float, works_ce: dict) -> dict:
    rows = {"fixed-time baseline": {"w_avg_f1": 7.0}, "sft-ce": {"w_avg_f1": ce}, "sft-cb_stream": {"w_avg_f1": cb},
            "sft-ce (shuffled frames)": {"w_avg_f1": 5.0}, "sft-cb_stream (shuffled frames)": {"w_avg_f1": cb}}
    from streampro.reproduce import FULL

    return {"settings": {"seed": seed, "budget": asdict(FULL)}, "models": ["sft-ce", "sft-cb_stream"], "rows": rows,
            "works": {"sft-ce": works_ce, "sft-cb_stream": {"AA": False, "GP": False}},
            "control_f1": {"fixed-time baseline": 4.0, "sft-ce": 80.0, "sft-cb_stream": 6.0},
            "validation_w_avg_f1": {"sft-ce": ce - 1, "sft-cb_stream": cb - 1}, "final_model": "sft-ce"}


def test_compare_tabulates_runs_side_by_side_with_the_mean(tmp_path, capsys):
    runs = []
    for seed, ce, cb, works in [(0, 18.0, 11.0, {"AA": True, "GP": True}), (1, 12.0, 14.0, {"AA": False, "GP": True})]:
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps(_summary(seed, ce, cb, works)))
        runs.append(str(d))
    assert main(["reproduce", "--compare", *runs, "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert table.strip() in capsys.readouterr().out  # printed too
    assert "| sft-ce | 18.0 | 12.0 | 15.0 |" in table  # test W-Avg per seed and the mean
    assert "| sft-cb_stream | 11.0 | 14.0 | 12.5 |" in table
    assert "| sft-ce | 2 (AA GP) | 1 (GP) | – |" in table  # works-on counts, not averaged
    assert "| sft-cb_stream | 0 (–) | 0 (–) | – |" in table
    assert "| fixed-time baseline | 4.0 | 4.0 | 4.0 |" in table  # the control task's own baseline
    assert "Final model (chosen on validation): seed 0: sft-ce; seed 1: sft-ce" in table


def test_compare_has_no_mean_over_runs_of_different_budgets(tmp_path):
    runs = []
    for name, budget in [("plain", {}), ("curriculum", {"control_first_steps": 200})]:
        summary = _summary(2, 10.0, 12.0, {"GP": True})
        summary["settings"]["budget"] = budget
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(summary))
        runs.append(str(tmp_path / name))
    assert main(["reproduce", "--compare", *runs, "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| model | seed 2, plain recipe | seed 2, plain recipe, control-first-steps 200 |" in table
    assert "| sft-ce | 10.0 | 10.0 |" in table and " mean |" not in table
    assert "budgets differ, so there is no mean column" in table


def test_compare_names_a_run_that_has_not_finished(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json not found"):
        main(["reproduce", "--compare", str(tmp_path)])


@pytest.mark.slow
def test_control_first_curriculum_trains_the_control_clips_alone_then_each_loss_from_there(tmp_path):
    from streampro import reproduce as R

    budget = replace(R.QUICK, caption_steps=0, control_first_steps=2, control_first_loss="cb_stream", sft_steps=1)
    run = R.Run(tmp_path, budget, seed=0, quick=True)
    R.build_data(run)
    R.build_init(run)
    R.train_control_first(run)
    ids = [json.loads(line)["id"] for line in (run.data / "sft" / "control_train.jsonl").read_text().splitlines()]
    assert ids and all(i.startswith("synth-CC-") for i in ids)  # the control clips only
    history = json.loads((run.model_dir("control-first") / "log_history.json").read_text())
    assert history[-1]["step"] == 2
    assert any("decision/response_weight" in entry for entry in history)  # CB-Stream's class weights: its loss
    R.train_sft(run, "ce")
    assert (run.model_dir("sft-ce") / "start.txt").read_text().strip() == "control-first"
    assert (run.model_dir("control-first") / "start.txt").read_text().strip() == "init"
    assert R._run_label(json.loads((tmp_path / "settings.json").read_text())) == "seed 0, sft-steps 1, caption-steps 0"


@pytest.mark.slow
def test_caption_stage_centred_features_and_short_prompt(tmp_path):
    """--caption-steps trains the language model on captions first (tower fixed); the init options apply."""
    import torch
    from safetensors.torch import load_file

    from streampro import reproduce as R
    from streampro.loading import load_model_and_processor

    # The default recipe without the curriculum (motion captions included).
    budget = replace(R.QUICK, sft_steps=1, control_first_steps=0)
    assert budget.caption_steps and budget.motion_caption_clips
    assert budget.centre_image_features and budget.short_system_prompt
    run = R.Run(tmp_path, budget, seed=0, quick=True)
    R.build_data(run)
    R.build_init(run)
    model, processor = load_model_and_processor(run.model_dir("init"), device="cpu")
    assert processor.system_prompt == R.SHORT_SYSTEM_PROMPT  # saved with the processor: every stage uses it
    inputs = processor.image_processor(images=R._training_frames(run), return_tensors="pt")
    with torch.no_grad():
        features = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    features = getattr(features, "pooler_output", features)
    assert features.mean(0).norm() < 1e-4
    assert (features - features.mean(0)).norm(dim=-1).mean() == pytest.approx(1.0, abs=1e-4)

    R.train_captions(run)
    ids = [json.loads(line)["id"] for line in (run.data / "sft" / "caption_stage_train.jsonl").read_text().splitlines()]
    assert {i.split("-")[1] for i in ids} == {"CAP", "MCAP"}  # still scenes and motion captions, nothing else
    R.train_sft(run, "ce")
    assert (run.model_dir("sft-ce") / "start.txt").read_text().strip() == "captions"
    weights = {name: load_file(run.model_dir(name) / "model.safetensors") for name in ("init", "captions", "sft-ce")}
    tower = [key for key in weights["init"] if key.startswith("visual.")]
    assert tower
    for key in tower:  # the tower stays as initialised in every stage
        assert weights["init"][key].equal(weights["captions"][key]) and weights["init"][key].equal(weights["sft-ce"][key])
    assert any(not v.equal(weights["captions"][k]) for k, v in weights["init"].items() if not k.startswith("visual."))
    assert R.caption_splits(run) == ["caption_validation", "motion_caption_validation"]
    for split, task in zip(R.caption_splits(run), ("OU", "EU")):
        report = R.evaluate(run, "captions", split, max_new_tokens=R.CAPTION_MAX_NEW_TOKENS)
        assert json.loads((report / "report.json").read_text())["results"][f"{task}_f1"] is not None
    assert R._run_label(json.loads((tmp_path / "settings.json").read_text())) == (
        "seed 0, sft-steps 1, control-first-steps 0")


def test_a_run_from_before_a_budget_field_resumes_as_it_ran(tmp_path):
    from streampro import reproduce as R

    plain = replace(R.QUICK, **R.PLAIN_RECIPE)
    R.Run(tmp_path, plain, seed=0, quick=True)
    settings = json.loads((tmp_path / "settings.json").read_text())
    for field in R.ADDED_FIELDS:
        del settings["budget"][field]  # written by an older version
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    R.Run(tmp_path, plain, seed=0, quick=True)  # accepted: runs before the fields had none of their stages
    assert R._run_label(settings) == "seed 0, plain recipe"
    with pytest.raises(ValueError, match="other settings"):
        R.Run(tmp_path, R.QUICK, seed=0, quick=True)  # today's default recipe is another run


def test_plain_and_the_recipe_options_set_the_budget(tmp_path, monkeypatch):
    """--plain is the first runs' recipe; the options apply on top of it, --no-... turns one off."""
    from streampro import reproduce as R

    budgets = []

    def stop(out, budget, *args, **kwargs):
        budgets.append(budget)
        raise SystemExit("stopped")

    monkeypatch.setattr(R, "Run", stop)
    for argv in (["--plain"], ["--plain", "--control-first-steps", "200", "--control-first-loss", "cb_stream"],
                 ["--no-short-system-prompt", "--caption-steps", "0"], ["--size", "84", "--extra-train", "700", "--extra-validation", "70"]):
        with pytest.raises(SystemExit, match="stopped"):
            main(["reproduce", "--out", str(tmp_path / "run"), *argv])
    assert budgets[0] == replace(R.FULL, **R.PLAIN_RECIPE)
    assert budgets[1] == replace(R.FULL, **{**R.PLAIN_RECIPE, "control_first_steps": 200, "control_first_loss": "cb_stream"})
    assert budgets[2] == replace(R.FULL, short_system_prompt=False, caption_steps=0, motion_caption_clips=0)
    assert budgets[3] == replace(R.FULL, size=84, extra_train_clips=700, extra_validation_clips=70)
    assert R._run_label({"seed": 1, "budget": asdict(budgets[1])}) == (
        "seed 1, plain recipe, control-first-steps 200, control-first-loss cb_stream")
    assert R._run_label({"seed": 1, "budget": asdict(budgets[2])}) == (
        "seed 1, caption-steps 0, motion-caption-clips 0, short-system-prompt False")


def test_a_curriculum_loss_without_curriculum_steps_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="add --control-first-steps"):
        main(["reproduce", "--out", str(tmp_path / "run"), "--quick", "--plain", "--control-first-loss", "focal"])
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_frame_size_off_the_patch_grid_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--size must be a multiple of 28"):
        main(["reproduce", "--out", str(tmp_path / "run"), "--quick", "--size", "70"])
    with pytest.raises(SystemExit, match="--extra-train must be >= 0"):
        main(["reproduce", "--out", str(tmp_path / "run"), "--quick", "--extra-train", "-7"])
    with pytest.raises(SystemExit, match="--extra-validation must be >= 0"):
        main(["reproduce", "--out", str(tmp_path / "run"), "--quick", "--extra-validation", "-7"])
    assert not (tmp_path / "run").exists()


def test_extra_training_clips_do_not_change_the_init(tmp_path):
    """The image features are centred on the same frames with and without --extra-train (extras come last)."""
    from streampro import reproduce as R

    base = replace(R.QUICK, control_clips=0, caption_steps=0, motion_caption_clips=0)
    frames = []
    for name, extra in (("plain", 0), ("extra", 14)):
        run = R.Run(tmp_path / name, replace(base, extra_train_clips=extra), seed=0, quick=True)
        R.build_data(run)
        frames.append([np.asarray(f) for f in R._training_frames(run)])
    assert len(frames[0]) == len(frames[1]) > 0
    assert all(np.array_equal(a, b) for a, b in zip(*frames))


def test_group_by_length_batches_records_of_similar_turn_counts(tmp_path, monkeypatch):
    """budget.group_by_length gives every SFT stage Trainer's length-grouped sampler over the records' num_turns."""
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl import TrlParser

    from streampro import reproduce as R

    samplers = []

    def build_only(build_trainer, parser_types, argv, work):
        trainer = build_trainer(*TrlParser(parser_types).parse_args_and_config(args=argv))
        samplers.append((trainer._get_train_sampler(), trainer.train_dataset["num_turns"]))

    monkeypatch.setattr(R, "_train", build_only)
    budget = replace(R.QUICK, caption_steps=0, motion_caption_clips=0, control_first_steps=0)
    for name, grouped in (("random", False), ("grouped", True)):
        run = R.Run(tmp_path / name, replace(budget, group_by_length=grouped), seed=0, quick=True)
        R.build_data(run)
        R.build_init(run)
        R.train_sft(run, "ce")
    (random_sampler, _), (grouped_sampler, turns) = samplers
    assert not isinstance(random_sampler, LengthGroupedSampler)
    assert isinstance(grouped_sampler, LengthGroupedSampler) and grouped_sampler.lengths == turns


def test_negative_caption_steps_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="--caption-steps must be >= 0"):
        main(["reproduce", "--out", str(tmp_path / "run"), "--quick", "--caption-steps", "-1"])
    with pytest.raises(SystemExit, match="--motion-captions must be >= 0 and needs the caption stage"):
        main(["reproduce", "--out", str(tmp_path / "run"), "--quick", "--caption-steps", "0", "--motion-captions", "9"])
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_stage_workers_die_with_a_killed_parent(tmp_path):
    """A killed run must not leave --jobs workers training on: a resumed run would race them."""
    pid_file, script = tmp_path / "worker.pid", tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from streampro.reproduce import _die_with_parent

        def work(path):
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(120)

        if __name__ == "__main__":
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
                pool.submit(work, sys.argv[1]).result()
    """))
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    parent.kill()
    parent.wait()

    def alive(pid: int) -> bool:
        status = Path(f"/proc/{pid}/status")
        try:
            return "\tZ" not in next(line for line in status.read_text().splitlines() if line.startswith("State:"))
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker)
