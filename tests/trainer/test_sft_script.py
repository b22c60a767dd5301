"""trainer/sft.py end to end on a tiny model: recipe → train → saved checkpoint that loads with remote code and streams."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streampro.modeling_streampro.processing_streampro import turn_time
from streampro.trainer.sft import build_trainer, save_final
from streampro.trainer.sft_config import SFTScriptArguments, StreamProSFTConfig
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import ModelConfig, TrlParser

from streampro.backbones import build_tiny_backbone
from streampro.cli import train as train_cli
from streampro.video import encode_video

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft" / "tiny_synth_cpu.yaml"
SIZE, TURNS = 56, 5  # 56 px frames (4 image tokens) and 5-turn streams keep each step well under a second


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A dataset directory laid out like StreamPro-Synth: videos/*.mp4 and sft/train.jsonl."""
    root = tmp_path_factory.mktemp("synthlike")
    (root / "videos").mkdir()
    (root / "sft").mkdir()
    rng = np.random.default_rng(1)
    lines = []
    for i in range(4):
        colours = rng.integers(0, 255, size=(TURNS, 3), dtype=np.uint8)
        encode_video(root / f"videos/v{i}.mp4", [np.broadcast_to(colours[j // 2], (SIZE, SIZE, 3)).copy()
                                               for j in range(2 * TURNS)], fps=2)
        lines.append(json.dumps({
            "id": f"v{i}", "task": "OU", "video": f"videos/v{i}.mp4", "duration": float(TURNS), "fps": 1.0,
            "num_turns": TURNS, "system": None,
            "questions": [{"turn": 0, "time": turn_time(0), "text": "Tell me when the screen changes colour."}],
            "responses": [{"turn": 2 + i % 2, "time": turn_time(2 + i % 2), "text": "it turned red"}],
        }))
    (root / "sft" / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root


def parse(dataset, tmp_path, *extra):
    parser = TrlParser((SFTScriptArguments, StreamProSFTConfig, ModelConfig))
    return parser.parse_args_and_config(args=[
        "--config", str(RECIPE), "--train_file", str(dataset / "sft" / "train.jsonl"), "--eval_file", "",
        "--frames_root", str(dataset), "--frame_cache_dir", str(tmp_path / "cache"), "--output_dir",
        str(tmp_path / "run"), "--max_steps", "2", "--per_device_train_batch_size", "2", "--save_strategy", "no",
        "--disable_tqdm", "true", *extra,
    ])


def stream_events(model, processor, dataset):
    from streampro.video import iter_video_frames

    frames = list(iter_video_frames(dataset / "videos" / "v0.mp4", fps=1.0))
    return list(model.generate_stream(frames, "Tell me when the screen changes colour.", processor=processor,
                                      max_new_tokens=4))


def logits_of(model, trainer, dataset):
    batch = trainer.data_collator([json.loads((dataset / "sft" / "train.jsonl").read_text().splitlines()[0])])
    batch.pop("labels")
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl"])
def test_recipe_trains_and_saves_a_checkpoint_that_loads_with_remote_code_and_streams(dataset, tmp_path, backbone):
    script, training, model_args = parse(dataset, tmp_path, "--model", f"tiny:{backbone}")
    trainer = build_trainer(script, training, model_args)
    trainer.train()
    save_final(trainer, training.output_dir)
    loaded = AutoModelForImageTextToText.from_pretrained(training.output_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(training.output_dir, trust_remote_code=True)
    assert type(loaded).__name__ == "StreamProForConditionalGeneration"
    trained = trainer.model.eval()
    torch.testing.assert_close(logits_of(loaded, trainer, dataset), logits_of(trained, trainer, dataset))
    events = stream_events(loaded, processor, dataset)
    assert len(events) == TURNS and all(e.decision in ("silence", "response") for e in events)


def test_lora_trains_only_the_language_model_and_decision_rows(dataset, tmp_path):
    script, training, model_args = parse(
        dataset, tmp_path, "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--learning_rate", "1e-2",
        "--freeze_vision", "true",
    )
    trainer = build_trainer(script, training, model_args)
    # The same tiny weights (tiny_seed 0) under plain parameter names, before training.
    before = dict(build_tiny_backbone("qwen2_5_vl", seed=0, streampro=True).model.named_parameters())
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(
        (".language_model.layers." in n and ".lora_" in n) or "embed_tokens.token_adapter" in n for n in trainable
    ), trainable
    trainer.train()
    processor = trainer.processing_class
    decision = [processor.silence_token_id, processor.response_token_id]
    save_final(trainer, training.output_dir)
    loaded = AutoModelForImageTextToText.from_pretrained(training.output_dir, trust_remote_code=True).eval()
    after = dict(loaded.named_parameters())
    emb = "model.language_model.embed_tokens.weight"
    changed_rows = (after[emb] != before[emb]).any(-1).nonzero().flatten().tolist()
    assert sorted(changed_rows) == sorted(decision)  # only the decision-token rows of the embeddings
    assert all(torch.equal(after[n], p) for n, p in before.items() if n.startswith("model.visual."))
    assert any(not torch.equal(after[n], p) for n, p in before.items() if ".language_model.layers." in n)
    events = stream_events(loaded, AutoProcessor.from_pretrained(training.output_dir, trust_remote_code=True), dataset)
    assert len(events) == TURNS


def test_train_cli_hands_every_argument_to_the_stage_parser():
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(["sft", "--config", "x.yaml", "--loss_type", "ce"])
    assert args.stage == "sft" and args.stage_args == ["--config", "x.yaml", "--loss_type", "ce"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_cli.run(argparse.Namespace(stage="sft", stage_args=[
            "--config", str(RECIPE), "--train_file", "/nonexistent/train.jsonl", "--use_cpu", "true"]))


def test_streampro_train_sft_is_registered():
    from streampro.cli import build_parser

    args = build_parser().parse_args(["train", "sft", "--config", "recipe.yaml", "--max_steps", "3"])
    assert args.command == "train" and args.stage == "sft"
    assert args.stage_args == ["--config", "recipe.yaml", "--max_steps", "3"]


def test_lora_decision_rows_on_a_tied_embedding_model_reach_the_fused_head(dataset):
    """Real Qwen-VL 3B/4B tie lm_head to the embeddings: the trainable decision rows must be what TRL's
    fused head scores (it reads lm_head.weight directly), so training and inference see the same logits."""
    from peft import get_peft_model
    from streampro.dataset_scripts.collator import StreamingSFTCollator
    from streampro.trainer.sft import expose_lm_head_bias, lora_config
    from trl.trainer.utils import add_fused_lm_head

    tb = build_tiny_backbone("qwen2_5_vl", seed=0, streampro=True)
    model, processor = tb.model, tb.processor
    model.config.tie_word_embeddings = model.config.get_text_config().tie_word_embeddings = True
    model.lm_head.weight = model.model.language_model.embed_tokens.weight  # tie, as in the real checkpoints
    add_fused_lm_head(model)
    peft_model = get_peft_model(model, lora_config(ModelConfig(use_peft=True, lora_r=4, lora_alpha=8), processor))
    expose_lm_head_bias(peft_model)  # what build_trainer does after SFTTrainer wraps the model
    (delta,) = [p for n, p in peft_model.named_parameters() if "trainable_tokens_delta" in n]
    with torch.no_grad():
        delta.add_(torch.randn_like(delta))  # as if trained: decision rows differ from the base rows
    record = json.loads((dataset / "sft" / "train.jsonl").read_text().splitlines()[0])
    batch = StreamingSFTCollator(processor, frames_root=dataset)([record])
    fused = peft_model(**batch, fused_lm_head=True)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = peft_model(**inputs).logits[:, :-1]  # the plain forward that inference runs
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    reference = torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(fused.log_probs[mask], reference[mask], rtol=1e-4, atol=1e-4)
    (-fused.log_probs.sum()).backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0


def test_load_model_from_a_checkpoint_dir_and_bad_names(tmp_path):
    from streampro.trainer.sft import load_model

    tb = build_tiny_backbone("qwen3_vl", seed=3, streampro=True)
    tb.model.save_pretrained(tmp_path / "ckpt")
    tb.processor.save_pretrained(tmp_path / "ckpt")
    model, processor = load_model(str(tmp_path / "ckpt"))
    assert processor.response_token_id == tb.processor.response_token_id
    for (n, p), q in zip(tb.model.named_parameters(), model.parameters()):
        assert torch.equal(p, q), n
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown tiny backbone"):
        load_model("tiny:llava")
