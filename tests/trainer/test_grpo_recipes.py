"""GRPO recipes parse strictly and hold the paper's setup; ``streampro train grpo`` runs a step and saves a model.

GPU recipes are parsed, not run (bf16 switched off on CPU-only machines, every other key as written).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from streampro.backbones import build_tiny_backbone
from streampro.cli import main
from streampro.video import encode_video

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "grpo"
GRPO_RECIPES = sorted(RECIPES.glob("*.yaml"))
PAPER_RECIPES = ("qwen2_5_vl_3b.yaml", "qwen3_vl_4b.yaml")
PAPER_GPUS = 8


def parse(path, *extra):
    from streampro.trainer.grpo_config import GRPOScriptArguments, StreamProGRPOConfig
    from trl import ModelConfig, TrlParser

    parser = TrlParser((GRPOScriptArguments, StreamProGRPOConfig, ModelConfig))
    return parser.parse_args_and_config(args=["--config", str(path), *extra])


def test_the_expected_recipes_exist():
    assert set(PAPER_RECIPES) | {"tiny_synth_cpu.yaml"} <= {p.name for p in GRPO_RECIPES}


@pytest.mark.parametrize("path", GRPO_RECIPES, ids=lambda p: p.name)
def test_recipe_parses_strictly(path):
    raw = yaml.safe_load(path.read_text())
    overrides = (
        ["--bf16", "false", "--use_cpu", "true"] if raw.get("bf16") and not torch.cuda.is_available() else []
    )
    script, training, model = parse(path, *overrides)
    for key, value in raw.items():
        if key in ("bf16", "use_cpu") and overrides:
            continue
        owner = next(o for o in (script, training, model) if hasattr(o, key))
        actual = getattr(owner, key)
        actual = getattr(actual, "value", actual)  # enums (lr_scheduler_type, save_strategy, ...)
        if isinstance(actual, list) and not isinstance(value, list):
            value = [] if value == "none" else [value]  # report_to: "none" -> [], "x" -> ["x"]
        assert actual == value, key
    assert training.reward_weights is None  # the trainer builds them from the three weights


def test_unknown_recipe_keys_are_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "tiny_synth_cpu.yaml").read_text() + "\nturn_tua: 3\n")
    with pytest.raises(ValueError, match="turn_tua"):
        parse(bad)


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_hold_the_paper_setup(name):
    raw = yaml.safe_load((RECIPES / name).read_text())
    assert raw["num_generations"] == 8 and raw["temperature"] == 1.0
    assert raw["learning_rate"] == pytest.approx(1e-6) and raw["num_train_epochs"] == 1
    # Global batch 16 samples = 16 x G trajectories.
    assert (
        raw["per_device_train_batch_size"] * raw["gradient_accumulation_steps"] * PAPER_GPUS
        == 16 * raw["num_generations"]
    )
    assert (raw["format_weight"], raw["turn_weight"], raw["traj_weight"]) == (0.1, 0.45, 0.45)
    assert raw["turn_tau"] == 8.0 and raw["fps"] == 1.0 and raw["window_turns"] == 200
    assert raw["turn_judge"] == "llm" and raw["rubric_judge"] == "llm" and raw["constrain_decision"] is False
    assert sorted(raw["tasks"]) == sorted(["EU", "OU", "AA", "TP", "TG", "GP"])


def test_train_grpo_cli_runs_a_step_and_saves(tmp_path):
    tb = build_tiny_backbone("qwen2_5_vl", seed=0, streampro=True)
    tb.model.save_pretrained(tmp_path / "model")
    tb.processor.save_pretrained(tmp_path / "model")
    frames = [np.full((56, 56, 3), 30 * k, dtype=np.uint8) for k in range(4)]  # 56 px: 4 tokens per frame
    encode_video(tmp_path / "v.mp4", frames, fps=1)
    rows = [
        {
            "id": "a",
            "task": "OU",
            "question": "When does it brighten?",
            "question_time": 1.0,
            "video": "v.mp4",
            "duration": 4.0,
            "fps": 1.0,
            "system": None,
            "rubric": None,
            "answers": [{"text": "now", "time": 3.0}],
        },
        {
            "id": "rf",
            "task": "RF",
            "question": "Warn me.",
            "question_time": 1.0,
            "video": "v.mp4",
            "duration": 4.0,
            "fps": 1.0,
            "system": None,
            "rubric": None,
            "answers": [{"text": "stop", "time": 2.0}],
        },
    ]
    (tmp_path / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    code = main(
        [
            "train",
            "grpo",
            "--config",
            str(RECIPES / "tiny_synth_cpu.yaml"),
            "--model",
            str(tmp_path / "model"),
            "--train_file",
            str(tmp_path / "rl.jsonl"),
            "--frames_root",
            str(tmp_path),
            "--frame_cache_dir",
            str(tmp_path / "cache"),
            "--output_dir",
            str(out),
            "--max_steps",
            "1",
            "--num_generations",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--max_new_tokens",
            "2",
            "--save_strategy",
            "no",
        ]
    )
    assert code == 0
    from streampro.loading import load_model_and_processor

    _model, processor = load_model_and_processor(str(out))
    assert processor.silence_token_id == tb.processor.silence_token_id
    assert any((tmp_path / "cache").iterdir())  # frames were decoded through the cache


def test_load_rl_samples_filters_and_names_bad_lines(tmp_path, caplog):
    from streampro.trainer.grpo import load_rl_samples

    base = {"question": "q", "question_time": 0.0, "video": "v.mp4", "system": None, "rubric": None}
    rows = [
        {**base, "id": "ou", "task": "OU", "duration": 4.0, "answers": [{"text": "x", "time": 2.0}]},
        {**base, "id": "rf", "task": "RF", "duration": 4.0, "answers": [{"text": "x", "time": 2.0}]},
        {**base, "id": "long", "task": "OU", "duration": 40.0, "answers": [{"text": "x", "time": 2.0}]},
    ]
    path = tmp_path / "rl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_rl_samples(str(path), tasks=["OU", "EU"], max_frames=10)
    assert ds["id"] == ["ou"] and "longer than max_frames_per_rollout" in caplog.text
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[0], "answers": []}) + "\n")
    with pytest.raises(ValueError, match=r"rl.jsonl:2: .*answers"):
        load_rl_samples(str(path))
    dims = ("granularity", "coherence", "coverage")
    rubric = [{"rubric_id": i, "dimension": dims[i % 3], "rubric": f"r{i}"} for i in range(6)]
    path.write_text(
        json.dumps({**rows[0], "rubric": rubric}) + "\n" + json.dumps({**rows[0], "id": "b"}) + "\n"
    )
    ds = load_rl_samples(str(path))
    assert ds[0]["rubric"] == rubric and ds[1]["rubric"] is None  # survives the Arrow round trip
    path.write_text(
        json.dumps({**rows[0], "rubric": [{"rubric_id": 1, "dimension": "coverage", "rubric": "x"}]}) + "\n"
    )
    with pytest.raises(ValueError, match=r"rl.jsonl:1: rubric: has 1 items"):
        load_rl_samples(str(path))
