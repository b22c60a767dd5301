"""StreamPro SFT trainer: TRL's ``SFTTrainer`` with the CB-Stream loss (docs/method.md §4) and its baselines.

The only change to the training computation w.r.t. ``SFTTrainer`` is ``compute_loss``: per-token
weights on TRL's fused per-token log-probabilities (``model(**inputs, fused_lm_head=True)``, no
full-vocabulary logits), normalised exactly like ``SFTTrainer``'s own loss (by the trainer's
``num_items_in_batch`` = supervised tokens of the global batch), so gradient accumulation and DDP
give the same normalisation as one large batch. The decision classes are the processor's
``decision_token_ids``: ``</Silence>``, ``</Response>`` and, for a three-state model, ``</Standby>``
(the class weights are defined for any number of classes). ``__init__`` only bridges configuration: it
freezes the vision tower when asked, lets ``SFTTrainer`` validate its own ``loss_type`` names,
and tells ``Trainer`` that this loss takes ``num_items_in_batch``. ``_load_from_checkpoint``
fixes resuming (Trainer's loader silently skips transformers 5's renamed Qwen-VL weights).
``create_model_card`` / ``save_model`` write StreamPro's model card instead of TRL's.
``get_train_dataloader`` fills micro-batches up to ``max_tokens_per_batch`` tokens when set
(docs/training.md, "Token budgets"). Packed micro-batches (``pack_streams``, one row, per-stream
positions) need nothing here: the class counts are over the micro-batch's streams either way.

Pinned to trl==1.16.0 (the fused LM head outputs and ``_metrics`` are TRL internals).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate.utils import is_peft_model
from trl import SFTTrainer

logger = logging.getLogger(__name__)

# Vision-tower submodules that form the projector (trained with the LLM): Qwen2.5-VL's `merger`,
# Qwen3-VL's `merger` plus its DeepStack mergers.
PROJECTOR_PREFIXES = ("merger", "deepstack_merger_list")


def cb_stream_class_weights(counts: torch.Tensor | Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    """CB-Stream class weights from per-class token counts (docs/method.md §4).

    E_k = (1 − β^{n_k}) / (1 − β);  ŵ_k = [(1/E_k) / Σ_{j∈S} (1/E_j)] · |S|, over the classes S
    present (n_k > 0). Absent classes get weight 0 and are left out of the sum; a batch with a
    single present class gives it weight 1; no class present → all zeros (never a division by 0).
    """
    counts = torch.as_tensor(counts)
    n = counts.to(torch.float64)
    present = n > 0
    effective = (1.0 - torch.pow(torch.as_tensor(beta, dtype=torch.float64, device=n.device), n)) / (1.0 - beta)
    inverse = torch.where(present, 1.0 / effective.clamp(min=1e-12), torch.zeros_like(n))
    num_present = present.sum()
    weights = inverse / inverse.sum().clamp(min=1e-300) * num_present
    return weights.to(torch.float32)


def focal_class_weights(counts: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Streamo's focal α_c = (decision tokens / n_c) / (classes present); 0 for absent classes."""
    n = torch.as_tensor(counts).to(torch.float32)
    present = n > 0
    alpha = n.sum() / n.clamp(min=1) / present.sum().clamp(min=1)
    return torch.where(present, alpha, torch.zeros_like(n))


def stream_token_weights(
    targets: torch.Tensor,
    log_probs: torch.Tensor,
    mask: torch.Tensor,
    decision_ids: Sequence[int],
    loss_type: str,
    *,
    cb_beta: float = 0.9999,
    text_weight: float = 2.0,
    focal_gamma: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss weights (B, T) and the per-class decision counts (C,) of one micro-batch.

    ``targets`` (B, T) are the next-token labels aligned with ``log_probs`` (B, T); ``mask`` marks
    supervised tokens. Decision tokens are those whose target is one of ``decision_ids``; every
    other supervised token is a language token. Weights are zero off the mask. The focal
    modulation (1 − p_t)^γ keeps its gradient, as in the focal loss's definition.
    """
    is_class = torch.stack([(targets == c) & mask for c in decision_ids])  # (C, B, T)
    counts = is_class.sum(dim=(1, 2))  # (C,)
    is_decision = is_class.any(0)
    if loss_type == "ce":
        return mask.to(log_probs.dtype), counts
    if loss_type == "cb_stream":
        class_w = cb_stream_class_weights(counts, cb_beta).to(log_probs.dtype)
        decision_w = (is_class.to(log_probs.dtype) * class_w[:, None, None]).sum(0)
        return torch.where(is_decision, decision_w, mask.to(log_probs.dtype) * text_weight), counts
    if loss_type == "focal":
        alpha = focal_class_weights(counts).to(log_probs.dtype)
        alpha_t = (is_class.to(log_probs.dtype) * alpha[:, None, None]).sum(0)
        modulation = (1.0 - log_probs.exp()).clamp(min=0).pow(focal_gamma)
        return torch.where(is_decision, alpha_t * modulation, mask.to(log_probs.dtype)), counts
    raise ValueError(f"unknown loss_type {loss_type!r}; expected 'cb_stream', 'focal' or 'ce'")


# Attention for packed rows (pack_streams) with SDPA: one causal SDPA call per stream instead of one call
# over the whole row with a (ΣL)² block-diagonal mask (docs/training.md, "Packing").
PACKED_SDPA = "streampro_packed_sdpa"


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                          position_ids=None, **kwargs):
    """SDPA that runs each stream of a packed row on its own, causal; plain SDPA for everything else.

    A packed row is recognised as transformers does (``find_packed_sequence_indices``): one row,
    no mask, and text ``position_ids`` that restart at 0 where a stream starts. Each stream then
    gets ``is_causal=True`` without a mask (PyTorch's fused kernels, memory O(L) instead of the
    (ΣL)² mask, and Σ L_i² work instead of (ΣL)²). Attention never crosses a stream, exactly like
    the block-diagonal mask (tested against it and against padding).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    n = query.shape[2]
    if attention_mask is None and position_ids is not None and query.shape[0] == 1 and key.shape[2] == n > 1:
        starts = (position_ids.reshape(-1)[:n] == 0).nonzero().flatten().tolist()
        if starts and (len(starts) > 1 or starts[0] != 0):
            bounds = sorted({0, *starts, n})
            outs = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                                           dropout=dropout, scaling=scaling, is_causal=True)[0]
                    for a, b in zip(bounds, bounds[1:])]
            return torch.cat(outs, dim=1), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def packed_sdpa_mask(*args, attention_mask=None, allow_is_causal_skip=True, q_length=None, kv_length=None,
                     q_offset=0, kv_offset=0, **kwargs):
    """``sdpa_mask``, except no mask at all where transformers would build a packed row's block-diagonal one.

    For Qwen-VL's text models a causal mask that may not be skipped while there is no padding mask,
    no cache offset and as many keys as queries only arises from packed rows; the attention then
    keeps each stream apart itself (:func:`packed_sdpa_attention`).
    """
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and not allow_is_causal_skip and q_length == kv_length and not q_offset and not kv_offset:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, allow_is_causal_skip=allow_is_causal_skip,
                     q_length=q_length, kv_length=kv_length, q_offset=q_offset, kv_offset=kv_offset, **kwargs)


def use_packed_sdpa(model: torch.nn.Module) -> bool:
    """Switch an SDPA model to :data:`PACKED_SDPA` (registered with transformers on first use); True if switched."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if model.config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)
    model.set_attn_implementation(PACKED_SDPA)
    return True


def freeze_vision_tower(model: torch.nn.Module, projector: bool = False) -> int:
    """Freeze ``model.model.visual`` except the projector (merger) unless ``projector``; return the number of frozen tensors."""
    frozen = 0
    for name, param in model.model.visual.named_parameters():
        if projector or not name.startswith(PROJECTOR_PREFIXES):
            param.requires_grad_(False)
            frozen += 1
    return frozen


def apply_vision_freeze(model: torch.nn.Module, args) -> None:
    """Apply ``args.freeze_vision`` / ``args.freeze_projector`` (SFT and GRPO configs) to ``model``."""
    if args.freeze_projector and not args.freeze_vision:
        raise ValueError("freeze_projector=True needs freeze_vision=True (the projector is part of the vision tower)")
    if args.freeze_vision:
        frozen = freeze_vision_tower(model, projector=args.freeze_projector)
        logger.info("froze %d vision-tower tensors (%s)", frozen,
                    "projector too" if args.freeze_projector else "projector stays trainable")


class StreamProSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose ``compute_loss`` is the CB-Stream / focal / CE streaming loss.

    ``processing_class`` must be a ``StreamProProcessor`` (it names the decision tokens), ``args`` a
    :class:`~streampro.trainer.sft_config.StreamProSFTConfig`, ``data_collator`` usually a
    :class:`~streampro.dataset_scripts.collator.StreamingSFTCollator`.
    """

    def __init__(self, model, args=None, *pargs, **kwargs):
        from streampro.trainer.sft_config import StreamProSFTConfig

        if not isinstance(args, StreamProSFTConfig):
            raise TypeError(f"StreamProSFTTrainer needs args=StreamProSFTConfig(...), got {type(args).__name__}")
        if isinstance(model, str):
            raise TypeError("pass a loaded model (see streampro.trainer.sft.load_model), not a name: "
                            "StreamPro checkpoints load through their own class")
        processor = kwargs.get("processing_class")
        if processor is None or not hasattr(processor, "silence_token_id"):
            raise TypeError("StreamProSFTTrainer needs processing_class=StreamProProcessor (it names the decision tokens)")
        # (silence, response) or, three-state, (silence, response, standby): the loss's decision classes.
        self.decision_ids = tuple(processor.decision_token_ids)
        apply_vision_freeze(model, args)
        if args.pack_streams and use_packed_sdpa(model):
            logger.info("pack_streams: attention %s (SDPA stream by stream)", PACKED_SDPA)
        # SFTTrainer.__init__ checks `loss_type` against its own names ('nll', 'dft'); ours replace them.
        stream_loss = args.loss_type
        args.loss_type = "nll"
        try:
            super().__init__(model, args, *pargs, **kwargs)
        finally:
            args.loss_type = stream_loss
        # Our compute_loss normalises by `num_items_in_batch`; StreamPro's model sets
        # `accepts_loss_kwargs = False`, which would make Trainer skip counting it and average
        # per-micro-batch means instead (gradient accumulation != one large batch).
        self.model_accepts_loss_kwargs = True

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """StreamPro's card (``streampro.modelcard``) in ``output_dir`` instead of TRL's generic one."""
        from streampro.modelcard import write_trainer_card

        write_trainer_card(self, "sft", dataset_name=dataset_name, tags=tags)

    def save_model(self, output_dir=None, _internal_call=False):
        """``Trainer.save_model`` plus the StreamPro card, so each checkpoint and the final folder carry it."""
        from streampro.modelcard import write_trainer_card

        super().save_model(output_dir, _internal_call)
        write_trainer_card(self, "sft", output_dir)

    def get_train_dataloader(self):
        """With ``max_tokens_per_batch``: micro-batches filled up to that many tokens (:class:`TokenBudgetBatchSampler`).

        Record lengths come from :meth:`StreamingSFTCollator.record_length` at the frame-token bound
        of the collator's ``max_pixels`` (no video is decoded). The batch sampler is sharded over
        processes by ``accelerator.prepare`` like any other (each rank takes every N-th micro-batch).
        """
        args = self.args
        if args.max_tokens_per_batch is None:
            return super().get_train_dataloader()
        from functools import partial

        from streampro.dataset_scripts.collator import TokenBudgetBatchSampler, frame_token_bound
        from torch.utils.data import DataLoader
        from transformers.trainer_utils import seed_worker

        collator = self.data_collator
        if not hasattr(collator, "record_length"):
            raise TypeError("max_tokens_per_batch needs the StreamingSFTCollator (it measures record lengths)")
        frame_tokens = frame_token_bound(collator.processor, collator.max_pixels)
        lengths = [collator.record_length(r, frame_tokens) for r in self.train_dataset]
        sampler = TokenBudgetBatchSampler(
            lengths, args.max_tokens_per_batch, packed=collator.pack, shuffle=True,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            bucket_size=args.length_bucket_size,
        )
        if sampler.oversized:
            logger.warning("%d training records are longer than max_tokens_per_batch=%d and get a micro-batch each; "
                           "raise the budget or cut streams shorter (--window-turns)", sampler.oversized,
                           args.max_tokens_per_batch)
        logger.info("token budget %d: %d records in %d micro-batches", args.max_tokens_per_batch, len(lengths),
                    len(sampler))
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor if args.dataloader_num_workers > 0 else None,
            worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
        )
        return self.accelerator.prepare(loader)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Resume with the model's own strict loader (full-model checkpoints only).

        ``Trainer`` reads ``model.safetensors`` with ``load_state_dict(strict=False)``, but
        transformers 5 saves Qwen-VL weights under the original checkpoint names (``model.layers.*``,
        ``visual.*``) while the module names are ``model.language_model.*`` / ``model.visual.*``: every
        weight but ``lm_head`` would silently keep its current value. ``from_pretrained`` applies the
        name conversion and fails on any missing weight. PEFT adapters, FSDP and DeepSpeed checkpoints
        keep Trainer's own loading.
        """
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        full_model = (Path(resume_from_checkpoint) / "config.json").exists() and not is_peft_model(target)
        if not full_model or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(target.parameters()).dtype
        loaded = type(target).from_pretrained(resume_from_checkpoint, dtype=dtype)
        target.load_state_dict(loaded.state_dict(), strict=True)
        logger.info("resumed model weights from %s", resume_from_checkpoint)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Weighted NLL on fused log-probs: Σ_i w_i · (−log p_i) / N (docs/method.md §4)."""
        mode = "train" if self.model.training else "eval"
        args = self.args
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        mask = outputs.label_mask  # (B, L-1), aligned with labels[:, 1:]
        targets = inputs["labels"][:, 1:].to(mask.device)
        weights, counts = stream_token_weights(
            targets,
            outputs.log_probs,
            mask,
            self.decision_ids,
            args.loss_type,
            cb_beta=args.cb_beta,
            text_weight=args.text_weight,
            focal_gamma=args.focal_gamma,
        )
        num_tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = (weights * -outputs.log_probs).sum() / torch.as_tensor(num_tokens).clamp(min=1)
        # Like SFTTrainer: `num_items_in_batch` counts every rank's tokens and DDP averages gradients.
        if args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        self._log_stream_metrics(mode, outputs, targets, mask, counts, inputs)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _log_stream_metrics(self, mode, outputs, targets, mask, counts, inputs) -> None:
        """Per-step decision statistics through TRL's ``_metrics`` (averaged over each logging interval).

        Per class (silence, response and, three-state, standby): its count and weight; plus the
        decision accuracy and the response recall (and, three-state, the standby recall).
        """
        names = ("silence", "response", "standby")[: len(self.decision_ids)]
        correct = outputs.is_top1.bool() & mask
        is_class = [(targets == c) & mask for c in self.decision_ids]
        is_dec = torch.stack(is_class).any(0)
        if self.args.loss_type == "cb_stream":
            class_w = cb_stream_class_weights(counts, self.args.cb_beta)
        elif self.args.loss_type == "focal":
            class_w = focal_class_weights(counts)
        else:
            class_w = torch.ones(len(names))
        sums = [(correct & is_dec).sum(), mask.sum(), correct.sum(), outputs.entropy.sum(),
                *counts, *[(correct & m).sum() for m in is_class]]
        local = torch.stack([x.float() for x in sums])
        gathered = self.accelerator.gather_for_metrics(local[None])
        dec_ok, n_tok, n_ok, ent, *per_class = gathered.sum(0).tolist()
        n, ok = per_class[: len(names)], per_class[len(names):]  # per class: decisions, correct decisions
        # The weights actually used: one per class, micro-batch and rank, averaged over ranks.
        weights = self.accelerator.gather_for_metrics(class_w.to(local.device)[None]).mean(0).tolist()
        metrics = self._metrics[mode]
        for name, count in zip(names, n):
            metrics[f"decision/{name}_count"].append(count)
        if self.args.loss_type != "ce":
            for name, w in zip(names, weights):
                metrics[f"decision/{name}_weight"].append(w)
        if sum(n) > 0:
            metrics["decision/accuracy"].append(dec_ok / sum(n))
        for c, name in enumerate(names[1:], start=1):  # recall of the rare classes: response (and standby)
            if n[c] > 0:
                metrics[f"decision/{name}_recall"].append(ok[c] / n[c])
        metrics["mean_token_accuracy"].append(n_ok / n_tok if n_tok else 0.0)
        metrics["entropy"].append(ent / n_tok if n_tok else 0.0)
        if mode == "train":
            # A packed row (pack_streams) has no padding and no attention_mask: every token counts.
            mask = inputs.get("attention_mask")
            tokens = mask.sum() if mask is not None else torch.tensor(inputs["input_ids"].numel(), device=local.device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(tokens).sum().item()
            metrics["num_tokens"] = [self._total_train_tokens]
