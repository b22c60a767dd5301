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
from streampro.errors import UserError
from streampro.reproduce import load_recipe

QUICK = load_recipe("quick")


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
    # The folder records its recipe; another recipe or seed in the same folder is refused, not mixed in.
    assert load_recipe(out / "recipe.yaml") == QUICK
    assert summary["settings"] == {"recipe_file": "recipes/reproduce/quick.yaml", "seed": 0, "changed": {},
                                   "recipe": asdict(QUICK)}
    capsys.readouterr()
    assert main(["reproduce", "--out", str(out), "--quick", "--set", "sft_steps=5"]) == 2
    assert "holds a run of another recipe" in capsys.readouterr().err
    assert main(["reproduce", "--out", str(out), "--quick", "--seed", "1"]) == 2
    assert "seed 0, not 1" in capsys.readouterr().err
    # Shipping the chosen model: a loadable copy, its provenance (run label, recipe file, seed) and demo clips.
    from streampro import reproduce as R

    assets = tmp_path / "assets"
    R.install_assets(R.Run(out, QUICK, 0, "quick"), summary, assets=assets)
    prov = json.loads((assets / "streampro-tiny-synth" / "PROVENANCE.json").read_text())
    assert prov["source"].startswith(f"streampro reproduce ({summary['final_model']}; seed 0, quick)")
    assert prov["recipe"] == "recipes/reproduce/quick.yaml" and prov["settings"] == summary["settings"]
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
    settings = {"recipe_file": "recipes/reproduce/default.yaml", "changed": {}, "seed": seed,
                "recipe": asdict(load_recipe("default"))}
    return {"settings": settings, "models": ["sft-ce", "sft-cb_stream"], "rows": rows,
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


def test_compare_has_no_mean_over_runs_of_different_recipes(tmp_path):
    runs = []
    for name, changed in [("plain", {}), ("curriculum", {"control_first_steps": 200})]:
        summary = _summary(2, 10.0, 12.0, {"GP": True})
        summary["settings"]["recipe_file"] = "recipes/reproduce/paper_stages.yaml"
        summary["settings"]["changed"] = changed
        summary["settings"]["recipe"] = {**asdict(load_recipe("paper_stages")), **changed}
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(summary))
        runs.append(str(tmp_path / name))
    assert main(["reproduce", "--compare", *runs, "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| model | seed 2, paper_stages | seed 2, paper_stages, control-first-steps 200 |" in table
    assert "| sft-ce | 10.0 | 10.0 |" in table and " mean |" not in table
    assert "recipes differ, so there is no mean column" in table


def test_compare_names_a_run_that_has_not_finished(tmp_path, capsys):
    assert main(["reproduce", "--compare", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'results.json'} not found" in err and "finish `streampro reproduce --out" in err


@pytest.mark.slow
def test_control_first_curriculum_trains_the_control_clips_alone_then_each_loss_from_there(tmp_path):
    from streampro import reproduce as R
    from streampro.reproduce import stages as S

    recipe = replace(QUICK, caption_steps=0, motion_caption_clips=0, control_first_steps=2,
                     control_first_loss="cb_stream", sft_steps=1)
    run = R.Run(tmp_path, recipe, 0, "quick")
    S.build_data(run)
    S.build_init(run)
    S.train_control_first(run)
    ids = [json.loads(line)["id"] for line in (run.data / "sft" / "control_train.jsonl").read_text().splitlines()]
    assert ids and all(i.startswith("synth-CC-") for i in ids)  # the control clips only
    history = json.loads((run.model_dir("control-first") / "log_history.json").read_text())
    assert history[-1]["step"] == 2
    assert any("decision/response_weight" in entry for entry in history)  # CB-Stream's class weights: its loss
    S.train_sft(run, "ce")
    assert (run.model_dir("sft-ce") / "start.txt").read_text().strip() == "control-first"
    assert (run.model_dir("control-first") / "start.txt").read_text().strip() == "init"
    assert R.run_label(run.settings()) == "seed 0, quick, caption-steps 0, motion-caption-clips 0, sft-steps 1"


@pytest.mark.slow
def test_caption_stage_centred_features_and_short_prompt(tmp_path):
    """--caption-steps trains the language model on captions first (tower fixed); the init options apply."""
    import torch
    from safetensors.torch import load_file

    from streampro import reproduce as R
    from streampro.loading import load_model_and_processor
    from streampro.reproduce import stages as S

    # The default recipe without the curriculum (motion captions included).
    recipe = replace(QUICK, sft_steps=1, control_first_steps=0)
    assert recipe.caption_steps and recipe.motion_caption_clips
    assert recipe.centre_image_features and recipe.short_system_prompt
    run = R.Run(tmp_path, recipe, 0, "quick")
    S.build_data(run)
    S.build_init(run)
    model, processor = load_model_and_processor(run.model_dir("init"), device="cpu")
    assert processor.system_prompt == S.SHORT_SYSTEM_PROMPT  # saved with the processor: every stage uses it
    inputs = processor.image_processor(images=S._training_frames(run), return_tensors="pt")
    with torch.no_grad():
        features = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    features = getattr(features, "pooler_output", features)
    assert features.mean(0).norm() < 1e-4
    assert (features - features.mean(0)).norm(dim=-1).mean() == pytest.approx(1.0, abs=1e-4)

    S.train_captions(run)
    ids = [json.loads(line)["id"] for line in (run.data / "sft" / "caption_stage_train.jsonl").read_text().splitlines()]
    assert {i.split("-")[1] for i in ids} == {"CAP", "MCAP"}  # still scenes and motion captions, nothing else
    S.train_sft(run, "ce")
    assert (run.model_dir("sft-ce") / "start.txt").read_text().strip() == "captions"
    weights = {name: load_file(run.model_dir(name) / "model.safetensors") for name in ("init", "captions", "sft-ce")}
    tower = [key for key in weights["init"] if key.startswith("visual.")]
    assert tower
    for key in tower:  # the tower stays as initialised in every stage
        assert weights["init"][key].equal(weights["captions"][key]) and weights["init"][key].equal(weights["sft-ce"][key])
    assert any(not v.equal(weights["captions"][k]) for k, v in weights["init"].items() if not k.startswith("visual."))
    assert S.caption_splits(run) == ["caption_validation", "motion_caption_validation"]
    for split, task in zip(S.caption_splits(run), ("OU", "EU")):
        report = S.evaluate(run, "captions", split, max_new_tokens=S.CAPTION_MAX_NEW_TOKENS)
        assert json.loads((report / "report.json").read_text())["results"][f"{task}_f1"] is not None
    assert R.run_label(run.settings()) == "seed 0, quick, control-first-steps 0, sft-steps 1"


def test_a_run_folder_records_its_recipe_and_refuses_another(tmp_path):
    from streampro import reproduce as R

    recipe = replace(QUICK, sft_steps=5)
    R.Run(tmp_path, recipe, 0, "quick")
    assert load_recipe(tmp_path / "recipe.yaml") == recipe  # the whole recipe, parsed like any recipe file
    assert "quick.yaml, sft_steps=5" in (tmp_path / "recipe.yaml").read_text().splitlines()[0]
    assert json.loads((tmp_path / "run.json").read_text()) == {
        "recipe_file": "recipes/reproduce/quick.yaml", "seed": 0, "changed": {"sft_steps": 5}}
    R.Run(tmp_path, recipe, 0, "quick")  # the same recipe resumes
    with pytest.raises(UserError, match="sft_steps 5, not 3"):
        R.Run(tmp_path, QUICK, 0, "quick")
    with pytest.raises(UserError, match="seed 0, not 2"):
        R.Run(tmp_path, recipe, 2, "quick")


def test_extra_training_clips_do_not_change_the_init(tmp_path):
    """The image features are centred on the same frames with and without --extra-train (extras come last)."""
    from streampro import reproduce as R
    from streampro.reproduce import stages as S

    base = replace(QUICK, control_clips=0, control_first_steps=0, caption_steps=0, motion_caption_clips=0)
    frames = []
    for name, extra in (("plain", 0), ("extra", 14)):
        run = R.Run(tmp_path / name, replace(base, extra_train_clips=extra), 0, "quick")
        S.build_data(run)
        frames.append([np.asarray(f) for f in S._training_frames(run)])
    assert len(frames[0]) == len(frames[1]) > 0
    assert all(np.array_equal(a, b) for a, b in zip(*frames))


def test_group_by_length_batches_records_of_similar_turn_counts(tmp_path, monkeypatch):
    """recipe.group_by_length gives every SFT stage Trainer's length-grouped sampler over the records' num_turns."""
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl import TrlParser

    from streampro import reproduce as R
    from streampro.reproduce import stages as S

    samplers = []

    def build_only(build_trainer, parser_types, argv, work):
        trainer = build_trainer(*TrlParser(parser_types).parse_args_and_config(args=argv))
        samplers.append((trainer._get_train_sampler(), trainer.train_dataset["num_turns"]))

    monkeypatch.setattr(S, "_train", build_only)
    recipe = replace(QUICK, caption_steps=0, motion_caption_clips=0, control_first_steps=0)
    for name, grouped in (("random", False), ("grouped", True)):
        run = R.Run(tmp_path / name, replace(recipe, group_by_length=grouped), 0, "quick")
        S.build_data(run)
        S.build_init(run)
        S.train_sft(run, "ce")
    (random_sampler, _), (grouped_sampler, turns) = samplers
    assert not isinstance(random_sampler, LengthGroupedSampler)
    assert isinstance(grouped_sampler, LengthGroupedSampler) and grouped_sampler.lengths == turns


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_stage_workers_die_with_a_killed_parent(tmp_path):
    """A killed run must not leave --jobs workers training on: a resumed run would race them."""
    pid_file, script = tmp_path / "worker.pid", tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from streampro.reproduce.stages import _die_with_parent

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
