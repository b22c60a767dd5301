"""StreamPro GRPO trainer: TRL's ``GRPOTrainer`` where one completion is one whole streaming trajectory.

A rollout streams a sample's video through the engine's KV-cache loop (``StreamSession``, the
same code as ``generate_stream``): every frame is one turn, the policy samples the turn's first
token from the full vocabulary (``constrain_decision=False``: a malformed turn is possible, so the
format reward has something to judge) and, after ``</Response>``, the answer. The trajectory is
then laid out as ONE token sequence — system prompt, and per turn the user part (time tag,
frame tokens, question), the assistant header and the assistant tokens — with a mask that is 1
exactly on the policy's own tokens (each turn's generated decision + answer tokens, including an
``<|im_end|>`` the model produced) and 0 on environment tokens (frames, user text, turns before
the question where the loop forces silence, and closing tokens the loop inserts). That mask is
TRL's ``tool_mask``: TRL's own ``_compute_loss`` then gives the clipped GRPO objective, the
optional KL term and every loss statistic over policy tokens only, with a full-sequence forward
whose log-probabilities equal the streaming loop's (M-RoPE positions are the same; the trainer
logs the largest difference as ``rollout/logp_diff_max``).

Overridden methods (pinned to trl==1.16.0; tests/trainer/test_grpo_contract.py fails loudly on drift):

- ``__init__``: builds the reward functions from the config (format, turn-level F1, rubric with
  weights 0.1 / 0.45 / 0.45) and checks the processor.
- ``_generate_and_score_completions``: the only substantive change. TRL's version tokenises a
  chat prompt and calls ``generate``; a streaming trajectory has frames *inside* the completion,
  which neither ``generate``, ``rollout_func`` nor the tool loop can carry. This version runs the
  streaming rollouts, builds ``prompt_ids`` (system prompt), ``completion_ids`` (the rest),
  ``tool_mask`` (policy tokens), the frames' ``pixel_values`` / ``image_grid_thw`` /
  ``mm_token_type_ids``, then reuses TRL's ``_get_per_token_logps_and_entropies`` (old / reference
  log-probs) and ``_calculate_rewards`` and returns the dict TRL's ``_compute_loss`` consumes.
  One deliberate difference in the advantage: a rollout for which ANY weighted reward is ``None``
  (a failed judge) is unscorable — left out of its group's mean/std and given advantage 0 —
  where TRL would ``nansum`` the other rewards (a silent 0 for the failed one).

Engine hook: :class:`RolloutSession` subclasses the engine's ``StreamSession`` and overrides only
``_pick`` (suppress frame-placeholder tokens, record sampled log-probs); also covered by the
contract test.

Model card: ``create_model_card`` / ``save_model`` write StreamPro's card (``streampro.modelcard``)
instead of TRL's generic one, in the output folder and each checkpoint.

Not overridden: ``_prepare_inputs`` (buffering, ``steps_per_generation``), ``_compute_loss``,
``compute_loss``, ``training_step``, logging. vLLM generation is not supported (config check).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather, gather_object, is_peft_model
from streampro.modeling_streampro.modeling_streampro import StreamSession, StreamSessions
from streampro.modeling_streampro.processing_streampro import num_turns, turn_index_for_time
from streampro.trainer.rewards import build_reward_funcs, trajectory_transcript
from tqdm.auto import tqdm
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import nanstd, pad

logger = logging.getLogger(__name__)


class RolloutSession(StreamSession):
    """The engine's ``StreamSession`` with two additions for training rollouts.

    - Tokens that would break the training forward are never sampled: ``<|image_pad|>`` /
      ``<|video_pad|>`` in generated text would be taken for frame placeholders (TRL's own
      ``generate`` path suppresses the image token the same way).
    - The log-probability (at ``temperature``, unmasked — what the training forward computes) of
      every token picked from the full vocabulary is recorded in ``sampled_logps``.
    """

    def __init__(self, model, processor, *, suppress_ids: list[int], **options):
        super().__init__(model, processor, **options)
        self.suppress_ids = torch.tensor(sorted(suppress_ids), dtype=torch.long)
        self.sampled_logps: list[float] = []

    def _pick(self, logits: torch.Tensor) -> int:
        if logits.shape[-1] == len(self.decision_ids):  # the constrained decision (silence / response [/ standby])
            return super()._pick(logits)
        masked = logits.clone()
        masked[self.suppress_ids.to(logits.device)] = -math.inf
        token = super()._pick(masked)
        self.sampled_logps.append(float(torch.log_softmax(logits.float() / self.temperature, dim=-1)[token]))
        return token


@dataclass
class Rollout:
    """One streaming trajectory laid out as a single sequence."""

    ids: list[int]  # system + every turn (user part, frame tokens, assistant header, assistant tokens)
    policy_mask: list[int]  # 1 on the policy's generated tokens, 0 on environment tokens
    prompt_len: int  # the system prompt: TRL's "prompt"; the rest is the "completion"
    pixel_values: torch.Tensor  # (P, D) every frame, in turn order
    image_grid_thw: torch.Tensor  # (F, 3)
    turns: list[dict]  # per turn: rewards.TURN_KEYS
    sampled_logps: list[float] | None  # per policy token, in order; None when not all were sampled freely
    generated_ids: list[int] = field(default_factory=list)  # the policy tokens, in order


class StreamProGRPOTrainer(GRPOTrainer):
    """GRPO over whole streaming trajectories (docs/method.md §5); see the module docstring for the design.

    ``args`` must be a :class:`~streampro.trainer.grpo_config.StreamProGRPOConfig`,
    ``processing_class`` a ``StreamProProcessor``, ``train_dataset`` RL samples (``id``, ``task``,
    ``question``, ``question_time``, ``video``, ``duration``, ``answers``, ``rubric``, optional
    ``system``). The reward functions are built from the config.
    """

    def __init__(self, model, args, train_dataset=None, eval_dataset=None, processing_class=None, **kwargs):
        if args is None or not hasattr(args, "turn_tau"):
            raise TypeError("StreamProGRPOTrainer needs args=StreamProGRPOConfig(...)")
        if processing_class is None or not hasattr(processing_class, "silence_token_id"):
            raise TypeError("StreamProGRPOTrainer needs processing_class=StreamProProcessor")
        if "reward_funcs" in kwargs:
            raise TypeError(
                "reward functions come from the config (format_weight, turn_weight, traj_weight, judges)"
            )
        if (
            args.beta != 0.0
            and kwargs.get("peft_config") is None
            and not is_peft_model(model)
            and not args.trust_remote_code
        ):
            raise ValueError(
                "beta > 0 makes TRL load a reference copy of the checkpoint, which carries StreamPro's remote code: "
                "set trust_remote_code: true (or beta: 0, or train LoRA adapters, whose reference is the base model)"
            )
        from streampro.trainer.sft_trainer import apply_vision_freeze

        apply_vision_freeze(model, args)
        rubric_options = dict(args.rubric_judge_options or {})
        if args.rubric_judge == "llm":
            rubric_options.update(base_url=args.rubric_endpoint, model=args.rubric_model)
        reward_funcs, weights = build_reward_funcs(
            args.reward_weight_map,
            turn_judge=args.turn_judge,
            turn_judge_options=args.turn_judge_options,
            turn_tau=args.turn_tau,
            rubric_judge=args.rubric_judge,
            rubric_judge_options=rubric_options,
        )
        args.reward_weights = weights
        super().__init__(
            model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        tok = processing_class.tokenizer
        self._suppress_ids = [processing_class.image_token_id]
        video_pad = tok.convert_tokens_to_ids("<|video_pad|>")
        if video_pad is not None and video_pad != tok.unk_token_id:
            self._suppress_ids.append(video_pad)

    # ---- rollouts ----------------------------------------------------------------------------
    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """StreamPro's card (``streampro.modelcard``) in ``output_dir`` instead of TRL's generic one."""
        from streampro.modelcard import write_trainer_card

        write_trainer_card(self, "grpo", dataset_name=dataset_name, tags=tags)

    def save_model(self, output_dir=None, _internal_call=False):
        """``Trainer.save_model`` plus the StreamPro card, so each checkpoint and the final folder carry it."""
        from streampro.modelcard import write_trainer_card

        super().save_model(output_dir, _internal_call)
        write_trainer_card(self, "grpo", output_dir)

    def _load_frames(self, sample: dict) -> list:
        from streampro.dataset_scripts.frames import load_record_frames

        args = self.args
        n = num_turns(float(sample["duration"]), args.fps)
        if n > args.max_frames_per_rollout:
            raise ValueError(
                f"sample {sample['id']}: {n} frames at {args.fps:g} fps exceeds max_frames_per_rollout="
                f"{args.max_frames_per_rollout}; raise it (and window_turns) or filter long samples out"
            )
        q_turn = turn_index_for_time(float(sample["question_time"]), args.fps)
        if q_turn >= n:
            raise ValueError(
                f"sample {sample['id']}: question at {sample['question_time']} s falls on turn {q_turn}, beyond the "
                f"stream of {n} frames; fix the sample's question_time or duration"
            )
        record = {**sample, "num_turns": n, "fps": args.fps}
        return load_record_frames(record, args.frames_root, args.frame_cache_dir, args.max_pixels)

    def _rollout_session(self, model, sample: dict, generator=None, batched: bool = False) -> RolloutSession:
        args = self.args
        return RolloutSession(
            model,
            self.processing_class,
            suppress_ids=self._suppress_ids,
            generator=generator,
            _batched=batched,
            fps=args.fps,
            window_turns=args.window_turns,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.rollout_do_sample,
            temperature=args.temperature,
            top_p=args.top_p,
            system_prompt=sample.get("system"),
            constrain_decision=args.constrain_decision,
        )

    @torch.no_grad()
    def rollout(self, model, sample: dict, frames: list, generator: torch.Generator | None = None) -> Rollout:
        """Stream ``frames`` with the policy and lay the trajectory out as one masked sequence."""
        session = self._rollout_session(model, sample, generator)
        q_turn = turn_index_for_time(float(sample["question_time"]), self.args.fps)
        events = []
        for k, frame in enumerate(frames):
            if k == q_turn:
                session.ask(sample["question"])
            events.append(session.step(frame))
        return self._layout(session, events, frames)

    @torch.no_grad()
    def rollout_group(self, model, sample: dict, frames: list, generators: list[torch.Generator]) -> list[Rollout]:
        """The rollouts of one sample with these generators, stepped together (``StreamSessions``).

        Equal to one :meth:`rollout` per generator (the engine's batched sessions give the single
        sessions' events; each rollout samples from its own generator). The frame of a step is
        encoded once per rollout (the vision forward is batched, not shared).
        """
        sessions = [self._rollout_session(model, sample, g, batched=True) for g in generators]
        group = StreamSessions(model, self.processing_class, len(sessions), sessions[0].options, sessions=sessions)
        q_turn = turn_index_for_time(float(sample["question_time"]), self.args.fps)
        events: list[list] = [[] for _ in sessions]
        for k, frame in enumerate(frames):
            if k == q_turn:
                for i in range(len(sessions)):
                    group.ask(i, sample["question"])
            for i, ev in enumerate(group.step([frame] * len(sessions))):
                events[i].append(ev)
        return [self._layout(s, e, frames) for s, e in zip(sessions, events)]

    def _layout(self, session: RolloutSession, events: list, frames: list) -> Rollout:
        """The trajectory of ``session`` (its ``events`` on ``frames``) as one masked sequence."""
        args, processor = self.args, self.processing_class
        if session.dropped_turns or len(session.turns) != len(events):
            raise RuntimeError(
                "a turn slid out of the rollout's context; window_turns must cover the whole stream"
            )
        ids, mask = list(session.system_ids), [0] * len(session.system_ids)
        turns, generated = [], []
        eot = processor.end_of_turn_id
        for turn, ev in zip(session.turns, events):
            user = turn.head_ids + [processor.image_token_id] * turn.num_image_tokens + turn.tail_ids
            gen, assistant = list(ev.generated_ids), list(turn.assistant_ids)
            if (
                assistant[: len(gen)] != gen
            ):  # the engine's contract: generated tokens open the assistant turn
                raise RuntimeError(
                    f"turn {turn.index}: generated ids {gen} do not open the assistant turn {assistant}"
                )
            forced = ev.p_response is None  # before the question: silence is forced, not the policy's choice
            ids += user + assistant
            mask += [0] * len(user) + [0 if forced else 1] * len(gen) + [0] * (len(assistant) - len(gen))
            if not forced:
                generated += gen
            turns.append(
                {
                    "turn": ev.frame_index,
                    "time": ev.time,
                    "decision": ev.decision,
                    "text": ev.text,
                    "closed": bool(gen) and gen[-1] == eot,
                    "forced": forced,
                }
            )
        vision = processor.process_frames(frames)
        counts = processor.num_image_tokens(vision["image_grid_thw"])
        if counts != [t.num_image_tokens for t in session.turns]:
            raise RuntimeError("frame token counts of the batch encoding differ from the streaming loop's")
        free = not args.constrain_decision and len(session.sampled_logps) == len(generated)
        return Rollout(
            ids=ids,
            policy_mask=mask,
            prompt_len=len(session.system_ids),
            pixel_values=vision["pixel_values"],
            image_grid_thw=vision["image_grid_thw"],
            turns=turns,
            sampled_logps=session.sampled_logps if free else None,
            generated_ids=generated,
        )

    def _rollouts(self, inputs: list[dict]) -> list[Rollout]:
        frames_by_id: dict[str, list] = {}
        with unwrap_model_for_generation(
            self.model_wrapped,
            self.accelerator,
            gather_deepspeed3_params=self.args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
        ) as unwrapped:
            policy = unwrapped.get_base_model() if is_peft_model(unwrapped) else unwrapped
            was_training = policy.training
            policy.eval()
            try:
                out = []
                bar = tqdm(
                    total=len(inputs),
                    desc="rollouts",
                    leave=False,
                    disable=self.args.disable_tqdm or not self.accelerator.is_local_main_process,
                )
                # One generator per rollout, seeded from the global RNG in input order: one seed
                # reproduces a step, whether the rollouts of a group run together or one by one.
                seeds = torch.randint(0, 2**62, (len(inputs),)).tolist()
                generators = [torch.Generator().manual_seed(s) for s in seeds]
                # The G rollouts of a group (consecutive rows of one sample) run batched, unless
                # batch_rollouts is off, where the attention kernel takes the batch's mask (sdpa / eager).
                batched = self.args.batch_rollouts and (
                    policy.config.get_text_config()._attn_implementation in ("sdpa", "eager")
                )
                start = 0
                while start < len(inputs):
                    sample = inputs[start]
                    key = str(sample["id"])
                    end = start + 1
                    while batched and end < len(inputs) and str(inputs[end]["id"]) == key:
                        end += 1
                    if key not in frames_by_id:
                        frames_by_id[key] = self._load_frames(sample)
                    if end - start > 1:
                        out += self.rollout_group(policy, sample, frames_by_id[key], generators[start:end])
                    else:
                        out.append(self.rollout(policy, sample, frames_by_id[key], generators[start]))
                    bar.update(end - start)
                    start = end
                bar.close()
            finally:
                policy.train(was_training)
        return out

    # ---- TRL hook ----------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        inputs = [dict(x) for x in inputs]  # rewards get a `trajectory` column; leave the dataset rows alone
        rollouts = self._rollouts(inputs)
        pad_id = self._tokenizer.pad_token_id

        prompt_ids = pad(
            [torch.tensor(r.ids[: r.prompt_len]) for r in rollouts], padding_value=pad_id, padding_side="left"
        )
        prompt_mask = pad(
            [torch.ones(r.prompt_len, dtype=torch.long) for r in rollouts],
            padding_value=0,
            padding_side="left",
        )
        completion_ids = pad(
            [torch.tensor(r.ids[r.prompt_len :]) for r in rollouts],
            padding_value=pad_id,
            padding_side="right",
        )
        completion_mask = pad(
            [torch.ones(len(r.ids) - r.prompt_len, dtype=torch.long) for r in rollouts],
            padding_value=0,
            padding_side="right",
        )
        tool_mask = pad(
            [torch.tensor(r.policy_mask[r.prompt_len :], dtype=torch.long) for r in rollouts],
            padding_value=1,
            padding_side="right",
        )
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        completion_ids, completion_mask, tool_mask = (
            completion_ids.to(device),
            completion_mask.to(device),
            tool_mask.to(device),
        )
        prompt_completion_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, P+C)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        loss_mask = completion_mask * tool_mask  # (B, C): policy tokens only
        num_items_in_batch = self.accelerator.gather(loss_mask.sum()).sum()
        logits_to_keep = completion_ids.size(1)
        batch_size = (
            self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        )
        num_images = [r.image_grid_thw.size(0) for r in rollouts]
        forward_kwargs = {
            "pixel_values": torch.cat([r.pixel_values for r in rollouts]).to(device),
            "image_grid_thw": torch.cat([r.image_grid_thw for r in rollouts]).to(device),
            "mm_token_type_ids": (prompt_completion_ids == self.processing_class.image_token_id).int()
            * attention_mask,
        }

        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
        ):
            # Same rule as TRL: old log-probs only when generation and optimisation steps are misaligned.
            generate_every = self.args.steps_per_generation * self.num_iterations
            need_old = self.args.gradient_accumulation_steps % generate_every != 0
            diagnose = any(r.sampled_logps is not None for r in rollouts)
            old_per_token_logps = None
            if need_old or diagnose:
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model,
                    prompt_completion_ids,
                    attention_mask,
                    logits_to_keep,
                    batch_size=batch_size,
                    num_images=num_images,
                    **forward_kwargs,
                )
                old_per_token_logps = logps if need_old else None
                if diagnose:
                    self._log_logp_agreement(mode, logps, loss_mask, rollouts)
            ref_per_token_logps = None
            if self.beta != 0.0:
                ref_per_token_logps = self._reference_logps(
                    prompt_completion_ids,
                    attention_mask,
                    logits_to_keep,
                    batch_size,
                    num_images,
                    forward_kwargs,
                )

        for inp, r in zip(inputs, rollouts, strict=True):
            inp["trajectory"] = r.turns
        prompts = [x["question"] for x in inputs]
        completions = [trajectory_transcript(r.turns) for r in rollouts]
        rewards_per_func = self._calculate_rewards(
            inputs, prompts, completions, [r.generated_ids for r in rollouts]
        )
        advantages, rewards, is_std_zero = self._advantages(rewards_per_func, mode)

        process_slice = slice(
            self.accelerator.process_index * len(prompts), (self.accelerator.process_index + 1) * len(prompts)
        )
        all_process_advantages = advantages.clone()
        advantages = advantages[process_slice]

        metrics = self._metrics[mode]
        for i, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"].append(torch.nanmean(rewards_per_func[:, i]).item())
            metrics[f"rewards/{name}/std"].append(nanstd(rewards_per_func[:, i]).item())
        metrics["reward"].append(torch.nanmean(rewards).item())
        metrics["reward_std"].append(nanstd(rewards).item())
        metrics["frac_reward_zero_std"].append(is_std_zero.float().mean().item())
        metrics["rollout/unscorable_frac"].append(torch.isnan(rewards).float().mean().item())
        self._log_rollout_stats(mode, rollouts, loss_mask)

        self._logs["prompt"].extend(gather_object(prompts))
        self._logs["completion"].extend(gather_object(completions))
        for i, name in enumerate(self.reward_func_names):
            self._logs["rewards"][name].extend(rewards_per_func[:, i].tolist())
        self._logs["advantages"].extend(all_process_advantages.tolist())
        for column in sorted(set(gather_object(list(self._pending_extra_logs)))):
            values = self._pending_extra_logs.get(column, [None] * len(prompts))
            self._logs["extra"][column].extend(gather_object(values))
        self._pending_extra_logs.clear()
        for name in sorted(set(gather_object(list(self._pending_metrics)))):
            values = self._pending_metrics.get(name, [])
            stats = self.accelerator.gather(
                torch.tensor([sum(values), len(values)], dtype=torch.float32, device=device)
            )
            total, count = stats.view(-1, 2).sum(dim=0).tolist()
            metrics[name].append(total / count)
        self._pending_metrics.clear()

        output = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "tool_mask": tool_mask,
            "advantages": advantages,
            "num_items_in_batch": num_items_in_batch,
            "num_images": num_images,
            **forward_kwargs,
        }
        if old_per_token_logps is not None:
            output["old_per_token_logps"] = old_per_token_logps
        if ref_per_token_logps is not None:
            output["ref_per_token_logps"] = ref_per_token_logps
        return output

    # ---- pieces of the hook ----------------------------------------------------------------------
    def _reference_logps(self, ids, attention_mask, logits_to_keep, batch_size, num_images, forward_kwargs):
        def logps_of(model):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model, ids, attention_mask, logits_to_keep, batch_size=batch_size, num_images=num_images,
                **forward_kwargs,
            )
            return logps

        if self.ref_model is not None:
            return logps_of(self.ref_model)
        from trl.trainer.utils import use_adapter

        unwrapped = self.accelerator.unwrap_model(self.model)
        with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
            return logps_of(self.model)

    def _advantages(self, rewards_per_func: torch.Tensor, mode: str):
        """Group-normalised advantages of R = Σ w_i R_i (TRL's sum_then_normalize), where a rollout
        with any ``None`` among its weighted rewards is unscorable: NaN reward, excluded from its
        group's statistics, advantage 0."""
        device = rewards_per_func.device
        weights = self.reward_weights.to(device)
        g = self.num_generations if mode == "train" else self.num_generations_eval
        unscorable = torch.isnan(rewards_per_func[:, weights != 0]).any(dim=1)
        rewards = (torch.nan_to_num(rewards_per_func) * weights.unsqueeze(0)).sum(dim=1)
        rewards[unscorable] = torch.nan
        grouped = rewards.view(-1, g)
        mean = torch.nanmean(grouped, dim=1).repeat_interleave(g)
        if self.scale_rewards == "batch":
            std = nanstd(rewards).expand_as(rewards)
        elif self.scale_rewards in ("group", "none"):
            std = nanstd(grouped, dim=1).repeat_interleave(g)
        else:
            raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {self.scale_rewards!r}")
        advantages = rewards - mean
        if self.scale_rewards != "none":
            advantages = advantages / (std + 1e-4)
        is_std_zero = torch.isclose(torch.nan_to_num(std), torch.zeros_like(std))
        return torch.nan_to_num(advantages, nan=0.0), rewards, is_std_zero

    def _log_logp_agreement(self, mode, logps, loss_mask, rollouts) -> None:
        """Largest |log p_train − log p_rollout| over freely sampled policy tokens (should be ~1e-5 in fp32)."""
        worst = 0.0
        for b, r in enumerate(rollouts):
            if r.sampled_logps is None:
                continue
            train = logps[b][loss_mask[b].bool()].float().cpu()
            if train.numel() != len(r.sampled_logps):
                raise RuntimeError(
                    f"rollout {b}: {train.numel()} policy tokens in the mask, {len(r.sampled_logps)} sampled"
                )
            worst = max(
                worst, (train - torch.tensor(r.sampled_logps)).abs().max().item() if train.numel() else 0.0
            )
        self._metrics[mode]["rollout/logp_diff_max"].append(
            self.accelerator.gather(torch.tensor(worst, device=logps.device)).max().item()
        )

    def _log_rollout_stats(self, mode, rollouts, loss_mask) -> None:
        device = self.accelerator.device
        policy_turns = [[t for t in r.turns if not t["forced"]] for r in rollouts]
        local = torch.tensor(
            [
                sum(sum(t["decision"] == "response" for t in ts) for ts in policy_turns),
                sum(sum(t["decision"] == "invalid" for t in ts) for ts in policy_turns),
                sum(len(ts) for ts in policy_turns),
                sum(len(r.ids) for r in rollouts),
                loss_mask.sum().item(),
                len(rollouts),
            ],
            dtype=torch.float64,
            device=device,
        )
        responses, invalid, turns, tokens, policy, n = gather(local[None]).sum(0).tolist()
        metrics = self._metrics[mode]
        metrics["rollout/responses_per_trajectory"].append(responses / n)
        metrics["rollout/invalid_turn_frac"].append(invalid / max(turns, 1))
        metrics["rollout/sequence_tokens"].append(tokens / n)
        metrics["rollout/policy_tokens"].append(policy / n)
