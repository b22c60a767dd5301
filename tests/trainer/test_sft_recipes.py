"""Every SFT recipe parses strictly (TrlParser rejects unknown keys) and the paper recipes hold the paper's setup."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from streampro.trainer.sft_config import SFTScriptArguments, StreamProSFTConfig
from trl import ModelConfig, TrlParser

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SFT_RECIPES = sorted((RECIPES / "sft").glob("*.yaml"))
PAPER_RECIPES = {"qwen2_5_vl_3b.yaml": "qwen2_5_vl", "qwen3_vl_4b.yaml": "qwen3_vl"}
PAPER_GPUS = 8  # the recipes document global batch = per-device × accumulation × 8 GPUs


def parse(path: Path, *overrides: str):
    parser = TrlParser((SFTScriptArguments, StreamProSFTConfig, ModelConfig))
    return parser.parse_args_and_config(args=["--config", str(path), *overrides])


def test_the_expected_recipes_exist():
    names = {p.name for p in SFT_RECIPES}
    assert set(PAPER_RECIPES) | {"tiny_synth_cpu.yaml"} <= names


@pytest.mark.parametrize("path", SFT_RECIPES, ids=lambda p: p.name)
def test_recipe_parses_strictly(path):
    raw = yaml.safe_load(path.read_text())
    # bf16 recipes are GPU recipes: TrainingArguments refuses bf16 without a GPU, so a CPU-only
    # machine checks them with bf16 switched off on the command line (every other key as written).
    overrides = ["--bf16", "false", "--use_cpu", "true"] if raw.get("bf16") and not torch.cuda.is_available() else []
    script, training, model = parse(path, *overrides)
    for key, value in raw.items():
        if key in ("bf16", "use_cpu") and overrides:
            continue
        owner = next(o for o in (script, training, model) if hasattr(o, key))
        actual = getattr(owner, key)
        actual = getattr(actual, "value", actual)  # enums (lr_scheduler_type, save_strategy, ...)
        if isinstance(actual, list) and not isinstance(value, list):
            value = [] if value == "none" else [value]  # report_to: "none" → [], "x" → ["x"]
        assert actual == value, key


def test_unknown_recipe_keys_are_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "sft" / "tiny_synth_cpu.yaml").read_text() + "\nloss_typo: ce\n")
    with pytest.raises(ValueError, match="loss_typo"):
        parse(bad)


@pytest.mark.parametrize("name", sorted(PAPER_RECIPES))
def test_paper_recipes_hold_the_paper_setup(name):
    raw = yaml.safe_load((RECIPES / "sft" / name).read_text())
    assert raw["bf16"] is True and raw["activation_checkpointing"] is True
    assert raw["learning_rate"] == pytest.approx(1e-5) and raw["num_train_epochs"] == 1
    assert raw["freeze_vision"] is True and raw["loss_type"] == "cb_stream"
    assert raw["cb_beta"] == pytest.approx(0.9999) and raw["text_weight"] == pytest.approx(2.0)
    if raw.get("max_tokens_per_batch"):  # token budgets: streams per step vary (≈ 512, the header's estimate)
        assert raw["pack_streams"] is True and raw["max_tokens_per_batch"] >= 56_000  # one 200-turn window at 448 px
    else:
        assert raw["per_device_train_batch_size"] * raw["gradient_accumulation_steps"] * PAPER_GPUS == 512


def test_tiny_cpu_recipe_runs_on_cpu():
    raw = yaml.safe_load((RECIPES / "sft" / "tiny_synth_cpu.yaml").read_text())
    assert raw["use_cpu"] is True and raw["bf16"] is False and raw["model"].startswith("tiny:")
