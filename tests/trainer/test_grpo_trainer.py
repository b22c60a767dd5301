"""StreamProGRPOTrainer on a tiny model (CPU): rollouts, masks, log-prob agreement, a 2-step run.

The tiny model is random, so its first token of a turn would almost never be a decision token
and every rollout of a group would get the same (zero) reward — no advantage, no update. The
``biased`` fixture shifts the decision and end-of-turn logits up (one residual dimension made
positive for text tokens, and the lm_head rows of those tokens reading it), so rollouts mix
silence, responses and malformed turns and the rewards differ within a group.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streampro.trainer.grpo import build_trainer
from streampro.trainer.grpo_config import GRPOScriptArguments, StreamProGRPOConfig

from streampro.backbones import build_tiny_backbone
from streampro.errors import UserError
from streampro.video import encode_video

SIZE = 56  # the tiny image processor's smallest side: 4 frame tokens per turn keeps every forward cheap
DURATION = 6  # 6 turns at 1 fps per stream


def bias_towards_decisions(model, processor, strength: float = 4.0) -> None:
    """Make </Silence>, </Response> and <|im_end|> likely after every text token (see module docstring)."""
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight[:, 0] += (
            0.05  # residual dim 0 mostly > 0 for text tokens
        )
        for t in (processor.silence_token_id, processor.response_token_id, processor.end_of_turn_id):
            model.lm_head.weight[t, 0] = strength


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny StreamPro checkpoint and 2 RL samples over 2 encoded 6-second videos."""
    root = tmp_path_factory.mktemp("grpo")
    tb = build_tiny_backbone("qwen2_5_vl", seed=0, streampro=True)
    bias_towards_decisions(tb.model, tb.processor)
    tb.model.save_pretrained(root / "model")
    tb.processor.save_pretrained(root / "model")
    (root / "videos").mkdir()
    rng = np.random.default_rng(0)
    samples = []
    for i in range(2):
        colours = rng.integers(0, 255, size=(DURATION, 3), dtype=np.uint8)
        frames = [np.broadcast_to(c, (SIZE, SIZE, 3)).copy() for c in colours]
        encode_video(root / f"videos/v{i}.mp4", frames, fps=1)
        samples.append(
            {
                "id": f"s{i}",
                "task": "OU" if i == 0 else "EU",
                "question": "Tell me when the colour changes.",
                "question_time": 2.0,
                "video": f"videos/v{i}.mp4",
                "duration": float(DURATION),
                "fps": 1.0,
                "system": None,
                "rubric": None,
                "answers": [{"text": "it changed", "time": 4.0}]
                if i == 0
                else [{"text": "it changed", "start": 3.0, "end": 5.0}],
            }
        )
    (root / "rl.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return root


def make_args(root, tmp_path, **overrides) -> dict:
    args = {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "bf16": False,
        "activation_checkpointing": False,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "num_generations": 2,
        "max_steps": 2,
        "learning_rate": 1e-2,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 0.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 0,
        "dataloader_num_workers": 0,
        "frames_root": str(root),
        "max_new_tokens": 4,
        "window_turns": 8,
        "max_frames_per_rollout": 8,
        "rubric_judge": "offline",
        "turn_judge": "lexical",
    }
    args.update(overrides)
    return args


def make_trainer(root, tmp_path, **overrides):
    from trl import ModelConfig

    script = GRPOScriptArguments(model=str(root / "model"), train_file=str(root / "rl.jsonl"))
    return build_trainer(script, StreamProGRPOConfig(**make_args(root, tmp_path, **overrides)), ModelConfig())


def spy_batches(trainer) -> list[dict]:
    """Record every batch ``_generate_and_score_completions`` hands to TRL."""
    seen = []
    original = trainer._generate_and_score_completions

    def spy(inputs):
        out = original(inputs)
        seen.append(out)
        return out

    trainer._generate_and_score_completions = spy
    return seen


def test_two_step_cpu_run_updates_policy_with_masked_frames(data, tmp_path):
    trainer = make_trainer(data, tmp_path, log_completions=True)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    batches = spy_batches(trainer)
    trainer.train()
    assert len(batches) == 2  # one generation per step (steps_per_generation = 1)

    # Policy parameters moved (language model and lm_head at least).
    after = dict(trainer.model.named_parameters())
    moved = [n for n in before if not torch.equal(before[n], after[n].detach())]
    assert any("lm_head" in n for n in moved) and any("language_model.layers" in n for n in moved)

    # Frame tokens (and every other environment token) carry no loss: the loss mask is 0 on them.
    image_id = trainer.processing_class.image_token_id
    for batch in batches:
        completion = batch["completion_ids"]
        loss_mask = batch["completion_mask"] * batch["tool_mask"]
        assert (completion == image_id).sum() == 6 * 4 * completion.size(0)  # 6 frames × 4 tokens per rollout
        assert loss_mask[completion == image_id].sum() == 0
        assert batch["prompt_mask"].sum() > 0 and loss_mask.sum() > 0
        assert batch["num_items_in_batch"] == loss_mask.sum()
        # mm_token_type_ids mark exactly the frame tokens of the full sequence.
        full = torch.cat([batch["prompt_ids"], completion], dim=1)
        assert torch.equal(batch["mm_token_type_ids"].bool(), full == image_id)

    # Reward and advantage logs are finite; the rewards differed within groups at least once.
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2
    for h in logs:
        for key in (
            "reward",
            "reward_std",
            "loss",
            "rewards/format_reward/mean",
            "rewards/turn_f1_reward/mean",
            "rewards/rubric_reward/mean",
            "rollout/logp_diff_max",
        ):
            assert np.isfinite(h[key]), (key, h)
        assert h["rollout/logp_diff_max"] < 1e-3  # the full forward reproduces the streaming loop's log-probs
    assert any(h["frac_reward_zero_std"] < 1 for h in logs)
    advantages = torch.cat([b["advantages"] for b in batches])
    assert torch.isfinite(advantages).all() and advantages.abs().sum() > 0

    # The completions table (log_completions) holds each trajectory's timed responses.
    import pandas as pd

    table = pd.read_parquet(max((tmp_path / "out" / "completions").glob("*.parquet")))
    assert list(table["prompt"].unique()) == ["Tell me when the colour changes."]
    assert table["completion"].str.contains(r"^\[\d+s\]|stayed silent", regex=True).all()


def test_policy_mask_is_exactly_the_generated_tokens(data, tmp_path):
    trainer = make_trainer(data, tmp_path)
    sample = trainer.train_dataset[0]
    frames = trainer._load_frames(sample)
    r = trainer.rollout(trainer.model, sample, frames)
    ids, mask = torch.tensor(r.ids), torch.tensor(r.policy_mask, dtype=torch.bool)
    assert ids[mask].tolist() == r.generated_ids
    assert len(r.turns) == DURATION and [t["forced"] for t in r.turns] == [
        True,
        False,
        False,
        False,
        False,
        False,
    ]
    # Forced silent turns before the question contribute no policy token; the silence turn's
    # closing <|im_end|> is inserted by the loop, so it is an environment token.
    proc = trainer.processing_class
    policy_decisions = [t["decision"] for t in r.turns if not t["forced"]]
    n_silent = policy_decisions.count("silence")
    silence_positions = (ids == proc.silence_token_id) & mask
    assert silence_positions.sum() >= n_silent
    assert not mask[: r.prompt_len].any() and not mask[ids == proc.image_token_id].any()
    assert len(r.sampled_logps) == mask.sum()


def assert_rollout_matches_generate_stream(model, processor, sample, frames, rollout) -> list:
    """The rollout's per-turn decisions and texts are generate_stream's on the same frames; returns the events."""
    events = list(model.generate_stream(frames, sample["question"], processor=processor,
                                        question_time=sample["question_time"], max_new_tokens=4))
    assert [t["decision"] for t in rollout.turns] == [e.decision for e in events]
    assert [t["text"] for t in rollout.turns] == [e.text for e in events]
    return events


def test_greedy_rollout_decisions_equal_generate_stream(data, tmp_path):
    """Greedy mode with the inference decision rule reproduces generate_stream's decisions and texts."""
    from streampro.dataset_scripts.frames import load_record_frames

    trainer = make_trainer(data, tmp_path, rollout_do_sample=False, constrain_decision=True)
    model, processor = trainer.model, trainer.processing_class
    # Let the greedy decision change within a stream, so both decisions occur. The untrained model's state at
    # the decision hardly depends on the solid-colour frames, so most noise draws give one decision on every
    # turn; this draw's p(</Response>) rises from ~0.33 to ~0.53 over the turns (tiny tokenizer v2).
    with torch.no_grad():
        noise = torch.randn(model.lm_head.weight.shape[1] - 1, generator=torch.Generator().manual_seed(3))
        model.lm_head.weight[processor.response_token_id, 1:] += 2.0 * noise
    decisions = []
    for sample in trainer.train_dataset:
        frames = load_record_frames({**sample, "num_turns": DURATION, "fps": 1.0}, data)
        r = trainer.rollout(model, sample, frames)
        events = assert_rollout_matches_generate_stream(model, processor, sample, frames, r)
        decisions += [e.decision for e in events if e.p_response is not None]
    assert {"response", "silence"} <= set(decisions)
    # The GRPO mode itself (first token from the full vocabulary), greedy: where the arg-max over the
    # vocabulary is a decision token (here always, once <|im_end|> is no longer boosted), the
    # decisions and texts are generate_stream's; two runs agree token for token.
    free = make_trainer(data, tmp_path / "free", rollout_do_sample=False, constrain_decision=False)
    with torch.no_grad():
        free.model.lm_head.weight[processor.response_token_id, 1:] += 2.0 * noise
        free.model.lm_head.weight[processor.end_of_turn_id, 0] = 0.0
    free_decisions = []
    for sample in free.train_dataset:
        frames = free._load_frames(sample)
        r = free.rollout(free.model, sample, frames)
        assert_rollout_matches_generate_stream(free.model, processor, sample, frames, r)
        assert free.rollout(free.model, sample, frames).ids == r.ids
        free_decisions += [t["decision"] for t in r.turns if not t["forced"]]
    assert {"response", "silence"} <= set(free_decisions)


def test_failed_judge_makes_a_rollout_unscorable_not_zero(data, tmp_path):
    """A NaN (judge failure) in any weighted reward: NaN reward, out of the group statistics, advantage 0."""
    trainer = make_trainer(data, tmp_path)  # weights 0.1 / 0.45 / 0.45, G = 2
    nan = float("nan")
    rewards_per_func = torch.tensor(
        [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [1.0, nan, 1.0], [0.5, 1.0, 0.5], [0.0, 1.0, 0.0], [1.0, 1.0, nan]]
    )
    trainer.num_generations = 3
    advantages, rewards, _ = trainer._advantages(rewards_per_func, "train")
    total = lambda r: 0.1 * r[0] + 0.45 * r[1] + 0.45 * r[2]
    assert torch.isnan(rewards[2]) and torch.isnan(rewards[5])
    assert advantages[2] == 0 and advantages[5] == 0
    # Group 1 statistics come from rollouts 0 and 1 only; group 2 from 3 and 4.
    r0, r1 = total([1.0, 2.0, 1.0]), total([0.0, 0.0, 0.0])
    std = torch.tensor([r0, r1]).std()
    assert advantages[0].item() == pytest.approx((r0 - (r0 + r1) / 2) / (std.item() + 1e-4), rel=1e-5)
    assert advantages[3] > 0 > advantages[4]


def test_kl_term_and_lora_adapters(data, tmp_path):
    """beta > 0 (a reference copy of the checkpoint, needs trust_remote_code) and LoRA both run a step."""
    with pytest.raises(ValueError, match="trust_remote_code"):
        make_trainer(data, tmp_path / "a", beta=0.04)
    trainer = make_trainer(data, tmp_path / "b", beta=0.04, trust_remote_code=True, max_steps=1)
    trainer.train()
    (log,) = [h for h in trainer.state.log_history if "reward" in h]
    assert np.isfinite(log["kl"]) and np.isfinite(log["loss"])

    from trl import ModelConfig

    args = StreamProGRPOConfig(**make_args(data, tmp_path / "c", max_steps=1))
    script = GRPOScriptArguments(model=str(data / "model"), train_file=str(data / "rl.jsonl"))
    lora = build_trainer(script, args, ModelConfig(use_peft=True, lora_r=4))
    before = {n: p.detach().clone() for n, p in lora.model.named_parameters() if p.requires_grad}
    lora.train()
    after = dict(lora.model.named_parameters())
    assert any("lora_" in n and not torch.equal(before[n], after[n].detach()) for n in before)


def test_config_checks():
    with pytest.raises(ValueError, match="window_turns"):
        StreamProGRPOConfig(
            output_dir="x",
            use_cpu=True,
            bf16=False,
            window_turns=10,
            max_frames_per_rollout=20,
            rubric_judge="offline",
        )
    with pytest.raises(ValueError, match="rubric_endpoint"):
        StreamProGRPOConfig(output_dir="x", use_cpu=True, bf16=False)
    with pytest.raises(UserError, match="use_vllm is not supported") as refused:
        StreamProGRPOConfig(output_dir="x", use_cpu=True, bf16=False, rubric_judge="offline", use_vllm=True)
    assert "docs/grpo.md#rollouts-on-vllm" in refused.value.fix
    docs = (Path(__file__).resolve().parents[2] / "docs" / "grpo.md").read_text(encoding="utf-8")
    assert "\n## Rollouts on vLLM\n" in docs  # the section the message points to (its anchor)
    with pytest.raises(ValueError, match="reward weights"):
        StreamProGRPOConfig(
            output_dir="x", use_cpu=True, bf16=False, rubric_judge="offline", format_weight=-1
        )
    cfg = StreamProGRPOConfig(output_dir="x", use_cpu=True, bf16=False, rubric_judge="offline")
    assert (cfg.temperature, cfg.num_generations, cfg.learning_rate) == (1.0, 8, 1e-6)
    assert cfg.reward_weight_map == {"format": 0.1, "turn": 0.45, "traj": 0.45} and cfg.turn_tau == 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_step_gpu_run_bf16(data, tmp_path):
    """The same 2-step run on a GPU in bf16: finite logs, policy updated, log-probs close to the rollout's."""
    trainer = make_trainer(data, tmp_path, use_cpu=False, bf16=True)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert logs and all(np.isfinite(h["loss"]) and np.isfinite(h["reward"]) for h in logs)
    assert all(h["rollout/logp_diff_max"] < 0.5 for h in logs)  # bf16 rounding, not a layout error


# ---- batched rollouts: the G rollouts of a group stepped together ----------------------------
def test_rollout_group_equals_one_by_one_rollouts(data, tmp_path):
    trainer = make_trainer(data, tmp_path, rollout_do_sample=True, constrain_decision=False)
    sample = trainer.train_dataset[0]
    frames = trainer._load_frames(sample)

    def generators():
        return [torch.Generator().manual_seed(seed) for seed in (11, 12, 13, 14)]

    group = trainer.rollout_group(trainer.model, sample, frames, generators())
    alone = [trainer.rollout(trainer.model, sample, frames, g) for g in generators()]
    for a, b in zip(alone, group):
        assert (a.ids, a.policy_mask, a.generated_ids, a.turns) == (b.ids, b.policy_mask, b.generated_ids, b.turns)
        assert b.sampled_logps == pytest.approx(a.sampled_logps, abs=1e-5)
    assert len({tuple(r.generated_ids) for r in group}) > 1  # the generators differ, so do the rollouts


def test_one_seed_reproduces_the_rollouts_of_a_step(data, tmp_path):
    trainer = make_trainer(data, tmp_path, rollout_do_sample=True, constrain_decision=False)
    inputs = [dict(trainer.train_dataset[0]) for _ in range(3)] + [dict(trainer.train_dataset[1]) for _ in range(3)]

    def run(seed):
        torch.manual_seed(seed)
        return [r.generated_ids for r in trainer._rollouts(inputs)]

    assert run(0) == run(0)


def test_batch_rollouts_off_gives_the_same_rollouts_for_one_seed(data, tmp_path):
    trainer = make_trainer(data, tmp_path, rollout_do_sample=True, constrain_decision=False)
    inputs = [dict(trainer.train_dataset[0]) for _ in range(3)]

    def run(batch_rollouts):
        trainer.args.batch_rollouts = batch_rollouts
        torch.manual_seed(0)
        return [(r.ids, r.policy_mask, r.generated_ids, r.turns) for r in trainer._rollouts(inputs)]

    assert run(True) == run(False)


@pytest.mark.parametrize("constrain_decision", [False, True])
def test_three_state_checkpoint_rolls_out_standby_and_trains(data, tmp_path, constrain_decision):
    """A three-state checkpoint: rollouts take </Standby> decisions (no text, no reward penalty) and a step updates."""
    root = tmp_path / "three"
    tb = build_tiny_backbone("qwen2_5_vl", seed=0, streampro=True, standby=True)
    bias_towards_decisions(tb.model, tb.processor)
    with torch.no_grad():
        tb.model.lm_head.weight[tb.processor.standby_token_id, 0] = 4.0
    tb.model.save_pretrained(root / "model")
    tb.processor.save_pretrained(root / "model")
    (root / "rl.jsonl").write_text((data / "rl.jsonl").read_text())
    (root / "videos").symlink_to(data / "videos")
    trainer = make_trainer(root, tmp_path, constrain_decision=constrain_decision, max_steps=1)
    decisions = []
    for sample in trainer.train_dataset:
        frames = trainer._load_frames(sample)
        for _ in range(2):
            r = trainer.rollout(trainer.model, sample, frames)
            decisions += [t["decision"] for t in r.turns if not t["forced"]]
            assert all(t["text"] == "" for t in r.turns if t["decision"] == "standby")
    assert "standby" in decisions and {"silence", "response"} & set(decisions)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    (log,) = [h for h in trainer.state.log_history if "reward" in h]
    assert np.isfinite(log["loss"]) and np.isfinite(log["rewards/format_reward/mean"])
    if constrain_decision:
        return  # one step of two rollouts may have equal rewards (no advantage, no update); the step ran
    assert log["rollout/logp_diff_max"] < 1e-3  # the training forward reproduces the sampled log-probs
    assert log["frac_reward_zero_std"] < 1
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
