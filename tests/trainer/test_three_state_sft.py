"""Three-state SFT (Streamo's </Standby>, docs/training.md "Three states"): class weights over three
decision classes on a hand-counted micro-batch, and a short run that turns a two-state start model
into a three-state checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streampro.dataset_scripts.builders import build_sft_record
from streampro.dataset_scripts.collator import RecordError
from streampro.dataset_scripts.schema import validate_raw
from streampro.dataset_scripts.synth import ENCODE_FPS, clip_frames, make_clip
from streampro.trainer.sft import build_trainer, save_final
from streampro.trainer.sft_config import SFTScriptArguments, StreamProSFTConfig
from streampro.trainer.sft_trainer import cb_stream_class_weights, focal_class_weights, stream_token_weights
from trl import ModelConfig, TrlParser

from streampro.errors import UserError
from streampro.video import encode_video

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft" / "tiny_synth_cpu.yaml"
SIL, RESP, STBY, TEXT = 10, 11, 12, 99  # stand-in token ids: silence, response, standby, an answer word


def test_class_weights_on_a_hand_counted_three_class_micro_batch():
    # Two streams: 3 + 3 </Silence>, 1 </Response> (+ 1 answer token), 2 + 1 </Standby>; the second stream's
    # last three positions are padding (not supervised).
    targets = torch.tensor([[SIL, SIL, STBY, STBY, RESP, TEXT, SIL],
                            [SIL, STBY, SIL, SIL, TEXT, TEXT, TEXT]])
    mask = torch.ones_like(targets, dtype=torch.bool)
    mask[1, 4:] = False
    p = torch.full(targets.shape, 0.5)
    log_probs = p.log()
    decision_ids = (SIL, RESP, STBY)
    _, counts = stream_token_weights(targets, log_probs, mask, decision_ids, "ce")
    assert counts.tolist() == [6, 1, 3]
    # Focal (Streamo): α_c = (10 decision tokens / n_c) / 3 classes present.
    alpha = focal_class_weights(counts)
    torch.testing.assert_close(alpha, torch.tensor([10 / 6 / 3, 10 / 1 / 3, 10 / 3 / 3]))
    # CB-Stream: E = (1 − β^n) / (1 − β) = 5.9985, 1, 2.9997 at β = 0.9999; ŵ = (1/E) / Σ(1/E) · 3
    # ≈ (1/3, 2, 2/3), the inverse frequencies' shares (β → 1).
    cb = cb_stream_class_weights(counts, 0.9999)
    torch.testing.assert_close(cb, torch.tensor([0.33340, 1.99990, 0.66670]), atol=1e-5, rtol=0)
    assert float(cb.sum()) == pytest.approx(3.0)
    cb, alpha = cb.tolist(), alpha.tolist()
    # Per token: decision tokens get their class weight, the answer token λ_text, unsupervised ones 0.
    weights, _ = stream_token_weights(targets, log_probs, mask, decision_ids, "cb_stream", text_weight=2.0)
    assert weights[0].tolist() == pytest.approx([cb[0], cb[0], cb[2], cb[2], cb[1], 2.0, cb[0]])
    assert weights[1].tolist() == pytest.approx([cb[0], cb[2], cb[0], cb[0], 0, 0, 0])
    # Focal: α_c · (1 − p)^2 with p = 0.5, answer token weight 1.
    weights, _ = stream_token_weights(targets, log_probs, mask, decision_ids, "focal", focal_gamma=2.0)
    assert weights[0].tolist() == pytest.approx([alpha[0] / 4, alpha[0] / 4, alpha[2] / 4, alpha[2] / 4,
                                                 alpha[1] / 4, 1.0, alpha[0] / 4])


def test_an_absent_standby_class_gives_the_two_state_weights():
    """A micro-batch without </Standby> targets is weighted exactly as by a two-state model."""
    three, two = torch.tensor([5, 2, 0]), torch.tensor([5, 2])
    assert cb_stream_class_weights(three)[:2].tolist() == cb_stream_class_weights(two).tolist()
    assert cb_stream_class_weights(three)[2] == 0
    assert focal_class_weights(three).tolist() == focal_class_weights(two).tolist() + [0.0]
    assert focal_class_weights(three).tolist() == pytest.approx([7 / 5 / 2, 7 / 2 / 2, 0.0])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Three StreamPro-Synth clips (EU, TG, TP: spans, so Standby turns) at 56 px and their SFT records."""
    root = tmp_path_factory.mktemp("synth3")
    (root / "videos").mkdir()
    (root / "sft").mkdir()
    records = []
    for task in ("EU", "TG", "TP"):
        clip = make_clip(task, 0, 0, size=56)
        video = f"videos/{task}.mp4"
        encode_video(root / video, clip_frames(clip), ENCODE_FPS)
        records.append(build_sft_record(validate_raw({
            "id": f"synth-{task}", "task": task, "video": video, "duration": float(clip.duration),
            "question": clip.question, "question_time": clip.question_time, "answers": clip.answers})))
    assert all(r["standby"] for r in records)
    (root / "sft" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root, records


def parse(root, tmp_path, *extra):
    parser = TrlParser((SFTScriptArguments, StreamProSFTConfig, ModelConfig))
    return parser.parse_args_and_config(args=[
        "--config", str(RECIPE), "--train_file", str(root / "sft" / "train.jsonl"), "--eval_file", "",
        "--frames_root", str(root), "--frame_cache_dir", "", "--output_dir", str(tmp_path / "run"),
        "--max_steps", "2", "--per_device_train_batch_size", "3", "--save_strategy", "no", "--warmup_steps", "0",
        "--logging_steps", "1", "--disable_tqdm", "true", *extra,
    ])


def test_decision_states_3_trains_and_saves_a_three_state_checkpoint(synth, tmp_path):
    from transformers import AutoProcessor

    root, records = synth
    trainer = build_trainer(*parse(root, tmp_path, "--decision_states", "3"))
    processor = trainer.processing_class
    standby = processor.standby_token_id
    assert standby is not None and trainer.decision_ids == (processor.silence_token_id,
                                                            processor.response_token_id, standby)
    row = trainer.model.get_input_embeddings().weight[standby].detach().clone()
    trainer.train()
    save_final(trainer, trainer.args.output_dir)
    logs = [h for h in trainer.state.log_history if "decision/standby_count" in h]
    assert len(logs) == 2 and all(h["decision/standby_count"] > 0 and "decision/standby_weight" in h for h in logs)
    assert not torch.equal(row, trainer.model.get_input_embeddings().weight[standby])  # the new row trains
    out = Path(trainer.args.output_dir)
    config = json.loads((out / "config.json").read_text())
    assert config["standby_token_id"] == standby
    loaded = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert loaded.tokenizer.convert_tokens_to_ids("</Standby>") == standby == loaded.standby_token_id
    # The three-state checkpoint cannot train two-state; records without standby turns cannot train three-state.
    with pytest.raises(UserError, match="three-state .* decision_states is 2"):
        build_trainer(*parse(root, tmp_path / "again", "--model", str(out)))
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "standby"}) + "\n" for r in records))
    with pytest.raises(RecordError, match="'synth-EU' has no 'standby' turns .*`streampro data build sft`"):
        build_trainer(*parse(root, tmp_path / "old", "--model", str(out), "--decision_states", "3",
                             "--train_file", str(old)))


def test_lora_trains_the_standby_row_too():
    from streampro.trainer.sft import lora_config

    from streampro.backbones import build_tiny_backbone

    processor = build_tiny_backbone("qwen2_5_vl", streampro=True, standby=True).processor
    config = lora_config(ModelConfig(use_peft=True), processor)
    assert config.trainable_token_indices == {"embed_tokens": [processor.silence_token_id, processor.response_token_id,
                                                               processor.standby_token_id]}
