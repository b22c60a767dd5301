"""Every shipped recipe (``recipes/sft``, ``recipes/grpo``) starts and runs one optimizer step.

Each recipe runs as written except what a CPU test machine must change, on the command line as a
user would: the model (a tiny saved StreamPro checkpoint, passed as a local directory), ``dtype``
float32 and ``bf16`` off, the data and output paths, one step of a small batch, no dataloader
workers, and for the GRPO paper recipes the judges (an offline ``lexical`` / ``offline`` pair
instead of the LLM endpoints the paper uses). Logging (``report_to``), activation checkpointing and
every other key stay as shipped, so a recipe that needs an uninstalled package fails here.
Also: ``model`` takes a local directory or a Hub id (passed through to ``from_pretrained``), and
GRPO treats an empty ``frame_cache_dir`` as off.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from streampro.dataset_scripts.builders import build_records

from streampro.cli import main
from streampro.video import encode_video

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SFT_RECIPES = sorted((RECIPES / "sft").glob("*.yaml"))
GRPO_RECIPES = sorted((RECIPES / "grpo").glob("*.yaml"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two 4-second clips (56 px frames: 4 vision tokens each) with their SFT records and RL samples."""
    root = tmp_path_factory.mktemp("recipe-data")
    frames = [np.full((56, 56, 3), 40 * k, dtype=np.uint8) for k in range(4)]
    encode_video(root / "v.mp4", frames, fps=1)
    raw = [
        {"id": f"s{i}", "task": "OU", "source": "test", "video": "v.mp4", "duration": 4.0,
         "question": "When does it brighten?", "question_time": 0.0, "answers": [{"text": "now", "time": 2.0 + i}],
         "system": None, "meta": None}
        for i in range(2)
    ]
    for kind in ("sft", "rl"):
        rows = build_records(kind, raw, 1.0)
        (root / f"{kind}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


COMMON = ["--dtype", "float32", "--bf16", "false", "--use_cpu", "true", "--max_steps", "1",
          "--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0", "--save_strategy", "no",
          "--logging_steps", "1"]


def _run(stage, recipe, tiny_dir, data, tmp_path, *extra):
    out = tmp_path / "out"
    args = ["train", stage, "--config", str(recipe), "--model", str(tiny_dir), "--train_file", str(data / f"{stage_file(stage)}"),
            "--frames_root", str(data), "--frame_cache_dir", str(tmp_path / "cache"), "--output_dir", str(out),
            *COMMON, *extra]
    assert main(args) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    return out


def stage_file(stage):
    return "sft.jsonl" if stage == "sft" else "rl.jsonl"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", SFT_RECIPES, ids=lambda p: p.name)
def test_every_sft_recipe_runs_one_step(recipe, tiny_dir, data, tmp_path):
    raw = yaml.safe_load(recipe.read_text())
    assert "gradient_checkpointing" not in raw  # deprecated in transformers 5.23: activation_checkpointing
    _run("sft", recipe, tiny_dir, data, tmp_path, "--eval_file", "", "--per_device_train_batch_size", "2")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", GRPO_RECIPES, ids=lambda p: p.name)
def test_every_grpo_recipe_runs_one_step(recipe, tiny_dir, data, tmp_path):
    raw = yaml.safe_load(recipe.read_text())
    assert "gradient_checkpointing" not in raw
    judges = []
    if raw.get("turn_judge") == "llm" or raw.get("rubric_judge") == "llm":  # no endpoint in tests
        judges = ["--turn_judge", "lexical", "--turn_judge_options", "{}", "--rubric_judge", "offline",
                  "--rubric_judge_options", "{}"]
    _run("grpo", recipe, tiny_dir, data, tmp_path, "--num_generations", "2", "--per_device_train_batch_size", "2",
         "--max_new_tokens", "2", *judges)


def test_gpu_recipes_need_no_uninstalled_logger():
    """``report_to`` names only backends every install has (none); trackio is the documented extra."""
    for recipe in SFT_RECIPES + GRPO_RECIPES:
        raw = yaml.safe_load(recipe.read_text())
        assert raw.get("report_to", "none") == "none", recipe.name
        assert "activation_checkpointing" in raw, recipe.name
    extras = Path(__file__).resolve().parents[2].joinpath("pyproject.toml").read_text()
    assert 'tracking = ["trackio' in extras


def test_model_accepts_a_local_directory(tiny_dir):
    from streampro.trainer.sft import load_model

    model, processor = load_model(str(tiny_dir))
    assert processor.silence_token_id is not None and model.config.model_type


def test_model_passes_a_hub_id_to_from_pretrained(monkeypatch):
    """A Hub id is handed to ``from_pretrained`` unchanged (no download in tests)."""
    from streampro.modeling_streampro.modeling_streampro import StreamProForConditionalGeneration
    from streampro.modeling_streampro.processing_streampro import StreamProProcessor
    from streampro.trainer.sft import load_model

    seen = []
    monkeypatch.setattr(StreamProForConditionalGeneration, "from_pretrained",
                        classmethod(lambda cls, name, **kw: seen.append(("model", name, kw)) or "MODEL"))
    monkeypatch.setattr(StreamProProcessor, "from_pretrained",
                        classmethod(lambda cls, name, **kw: seen.append(("processor", name, kw)) or "PROCESSOR"))
    assert load_model("some-org/streampro-qwen2.5-vl-3b", dtype="bfloat16") == ("MODEL", "PROCESSOR")
    assert [(k, n) for k, n, _ in seen] == [("model", "some-org/streampro-qwen2.5-vl-3b"),
                                            ("processor", "some-org/streampro-qwen2.5-vl-3b")]
    assert str(seen[0][2]["dtype"]) == "torch.bfloat16"


@pytest.mark.parametrize("name, match", [("not/a/repo/id", "Hub repo id"), ("bad name!", "Hub repo id")])
def test_model_refuses_what_is_neither_a_directory_nor_a_hub_id(name, match):
    from streampro.trainer.sft import load_model

    with pytest.raises(FileNotFoundError, match=match):
        load_model(name)


def test_model_refuses_a_directory_without_a_checkpoint(tmp_path):
    from streampro.trainer.sft import load_model

    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path))


def test_grpo_treats_an_empty_frame_cache_dir_as_off(tmp_path, monkeypatch):
    from streampro.trainer.grpo_config import StreamProGRPOConfig

    monkeypatch.chdir(tmp_path)
    config = StreamProGRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, rubric_judge="offline",
                                 frame_cache_dir="", frames_root="")
    assert config.frame_cache_dir is None and config.frames_root is None
