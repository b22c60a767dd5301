"""The activation model (docs/activation.md): the label rule, the data, a training run, save/load through AutoModel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from streampro.trainer.activation import (
    ActivationCollator,
    ActivationScriptArguments,
    ActivationTrainingConfig,
    frame_labels,
    load_activation_model,
    read_streams,
    stream_windows,
)

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "activation" / "tiny_synth_cpu.yaml"


# ---- the label rule, on hand-checked examples ---------------------------------------------------


def test_last_p_percent_of_each_segment_is_positive():
    # Question on turn 0, responses on turns 4 and 9, 12 turns: segments 0-4 and 5-9 (5 frames each), 10-11 after.
    assert frame_labels(0, [4, 9], 12, 20) == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0]  # ceil(0.2 · 5) = 1
    assert frame_labels(0, [4, 9], 12, 50) == [0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0]  # ceil(0.5 · 5) = 3
    assert frame_labels(0, [4, 9], 12, 100) == [1] * 10 + [0, 0]


def test_segments_start_at_the_question_and_after_each_response():
    # Question on turn 3: labels cover turns 3..7; a response on the question's own turn is a 1-frame segment.
    assert frame_labels(3, [3, 5], 8, 100) == [1, 1, 1, 0, 0]
    # Segments of 10 and 2 frames at P = 30: 3 positives (0.3 · 10 is 3.0000000000000004 in floats) and 1.
    assert frame_labels(0, [9, 11], 12, 30) == [0] * 7 + [1, 1, 1] + [0, 1]
    # Responses unsorted or repeated on one turn count once.
    assert frame_labels(0, [9, 4, 4], 12, 20) == frame_labels(0, [4, 9], 12, 20)
    # No response: every frame negative.
    assert frame_labels(2, [], 5, 20) == [0, 0, 0]


@pytest.mark.parametrize(("args", "match"), [
    ((0, [4], 6, 0), "positive_percent"),
    ((0, [4], 6, 120), "positive_percent"),
    ((3, [2], 6, 20), "outside"),
    ((0, [6], 6, 20), "outside"),
    ((6, [], 6, 20), "question turn"),
])
def test_label_rule_refuses_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        frame_labels(*args)


# ---- data ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from streampro.dataset_scripts.synth import generate

    d = tmp_path_factory.mktemp("synth")
    generate(d, n=7, seed=0, size=32, progress=False)  # one clip per task, all in the train split
    return d


def test_raw_samples_and_sft_records_give_the_same_streams(synth):
    raw = read_streams(synth / "raw" / "train.jsonl")
    sft = read_streams(synth / "sft" / "train.jsonl")
    assert raw == sft and len(raw) == 7
    gp = next(s for s in raw if s["id"].startswith("synth-GP"))
    assert len(gp["response_turns"]) > 1 and gp["question_turn"] <= min(gp["response_turns"])


def test_windows_cover_the_stream_from_the_question_on():
    stream = {"id": "s", "video": "v.mp4", "fps": 1.0, "num_turns": 20, "question": "q", "question_turn": 2,
              "end_turn": 20, "response_turns": [6, 13]}
    windows = stream_windows(stream, 8, 20)
    assert [w["turns"] for w in windows] == [list(range(2, 10)), list(range(10, 18)), [18, 19]]
    assert sum((w["labels"] for w in windows), []) == frame_labels(2, [6, 13], 20, 20)


def test_a_window_batch_labels_the_act_tokens(synth):
    model, processor = load_activation_model("tiny:qwen2_5_vl")
    streams = read_streams(synth / "raw" / "train.jsonl")
    windows = stream_windows(streams[0], 4, 20)[:2]
    batch = ActivationCollator(processor, frames_root=str(synth), max_pixels=32 * 32)(windows)
    act = batch["input_ids"] == processor.act_token_id
    assert act.sum().item() == sum(len(w["turns"]) for w in windows)
    assert torch.equal(batch["labels"][act], torch.tensor([float(x) for w in windows for x in w["labels"]]))
    assert (batch["labels"][~act] == -100).all()
    out = model(**batch)
    assert out.logits.shape == batch["input_ids"].shape and torch.isfinite(out.loss)


def test_one_forward_scores_every_frame_as_frame_by_frame():
    """Causal: the score at frame i of a window equals the last score of the window cut after frame i."""
    model, processor = load_activation_model("tiny:qwen3_vl")
    model.eval()
    frames = [np.random.RandomState(i).randint(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(4)]
    whole = model.act_scores(**processor("When?", frames, turns=[3, 4, 5, 6]))[0]
    for i in range(4):
        cut = model.act_scores(**processor("When?", frames[: i + 1], turns=[3, 4, 5, 6][: i + 1]))[0]
        assert torch.allclose(cut[-1], whole[i], atol=1e-5)


# ---- save / load --------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl"])
def test_saves_and_loads_with_auto_classes(backbone, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoProcessor

    model, processor = load_activation_model(f"tiny:{backbone}")
    model.eval()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "streampro_activation"
    assert config["auto_map"]["AutoModel"] == "modeling_activation.StreamProActivationModel"
    assert {"modeling_activation.py", "configuration_activation.py", "processing_activation.py"} <= {
        p.name for p in tmp_path.iterdir()}
    assert AutoConfig.from_pretrained(tmp_path, trust_remote_code=True).act_token_id == processor.act_token_id
    loaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    loaded_processor = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    frames = [np.full((32, 32, 3), 40 * i, np.uint8) for i in range(3)]
    inputs = loaded_processor("Tell me when it turns white.", frames)
    assert torch.equal(inputs["input_ids"], processor("Tell me when it turns white.", frames)["input_ids"])
    assert torch.allclose(loaded.act_scores(**inputs)[0], model.act_scores(**inputs)[0], atol=1e-6)


def test_loading_is_strict(tmp_path):
    from safetensors.torch import load_file, save_file
    from streampro.modeling_streampro.modeling_activation import StreamProActivationModel
    from transformers import AutoModel

    model, processor = load_activation_model("tiny:qwen2_5_vl")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["score_head.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="score_head.weight"):
        StreamProActivationModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="score_head.weight"):
        AutoModel.from_pretrained(tmp_path, trust_remote_code=True)


# ---- the recipe and `streampro train activation` ----------------------------------------------------


def test_recipe_parses_strictly():
    from trl import ModelConfig, TrlParser

    parser = TrlParser((ActivationScriptArguments, ActivationTrainingConfig, ModelConfig))
    script, training, _ = parser.parse_args_and_config(args=["--config", str(RECIPE)])
    raw = yaml.safe_load(RECIPE.read_text())
    assert script.train_file == raw["train_file"] and training.positive_percent == raw["positive_percent"] == 20.0
    assert training.window_frames == 16 and training.freeze_vision and training.max_steps == raw["max_steps"]


def test_train_help_lists_the_activation_fields(capsys):
    from streampro.cli import main

    assert main(["train", "activation", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: streampro train activation --config RECIPE.yaml")
    assert "--positive_percent" in out and "--window_frames" in out


def test_train_command_steps_saves_and_reloads(synth, tmp_path):
    from transformers import AutoModel

    from streampro.cli import main

    out = tmp_path / "act"
    rc = main(["train", "activation", "--config", str(RECIPE), "--train_file", str(synth / "raw" / "train.jsonl"),
               "--eval_file", str(synth / "sft" / "train.jsonl"), "--frames_root", str(synth),
               "--frame_cache_dir", str(tmp_path / "cache"), "--max_pixels", "1024", "--window_frames", "4",
               "--per_device_train_batch_size", "2", "--max_steps", "2", "--warmup_steps", "0",
               "--save_steps", "100", "--output_dir", str(out)])
    assert rc == 0
    trained = AutoModel.from_pretrained(out, trust_remote_code=True)
    start, _ = load_activation_model("tiny:qwen2_5_vl")  # the same seed: the weights before training
    assert not torch.equal(trained.score_head.weight, start.score_head.weight)  # the head was trained
    assert torch.equal(trained.model.visual.patch_embed.proj.weight, start.model.visual.patch_embed.proj.weight)  # frozen
    log = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert all(np.isfinite(e["loss"]) for e in log if "loss" in e)
    assert (out / "README.md").read_text().count("act_scores") == 1
