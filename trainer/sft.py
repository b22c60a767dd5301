"""Stage one of StreamPro training: SFT on streaming conversations with the CB-Stream loss.

Run (tiny CPU recipe on StreamPro-Synth; make the data first with ``streampro data synth --out data/synth``)::

    streampro train sft --config recipes/sft/tiny_synth_cpu.yaml
    # same thing without the console command, any field overridable on the command line:
    python trainer/sft.py --config recipes/sft/tiny_synth_cpu.yaml --loss_type ce --output_dir runs/tiny-ce

Paper setups (GPU; see docs/training.md for multi-GPU launch commands)::

    accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml trainer/sft.py \\
        --config recipes/sft/qwen2_5_vl_3b.yaml

Fields come from three dataclasses: :class:`~streampro.trainer.sft_config.SFTScriptArguments`
(model and data), :class:`~streampro.trainer.sft_config.StreamProSFTConfig` (optimisation and
loss) and TRL's ``ModelConfig`` (``dtype`` and the LoRA options ``use_peft``, ``lora_r``, ...).
The final model is saved to ``output_dir`` with its processor and remote code, loadable with
``trust_remote_code=True`` (a LoRA run is merged first).
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

# LLM linear layers LoRA adapts when `lora_target_modules` is not given (Qwen2.5-VL / Qwen3-VL names).
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load_model(name: str, tiny_seed: int = 0, dtype: str | None = None, attn_implementation: str | None = None):
    """(model, processor) from a StreamPro checkpoint: a local directory, a Hub repo id
    (``org/name``, downloaded or read from the Hugging Face cache), or ``tiny:<backbone>``.

    ``attn_implementation`` (``sdpa``, ``eager``, ``flash_attention_2``, ...; None: transformers'
    default) — packed streams on a GPU want ``flash_attention_2`` (varlen kernel, no ΣL² mask).
    """
    import torch

    if name.startswith("tiny:"):
        from streampro.backbones import BACKBONES, build_tiny_backbone

        backbone = name.removeprefix("tiny:")
        if backbone not in BACKBONES:
            raise ValueError(f"model {name!r}: unknown tiny backbone; use one of {[f'tiny:{b}' for b in BACKBONES]}")
        tb = build_tiny_backbone(backbone, seed=tiny_seed, streampro=True)
        if attn_implementation is not None:
            tb.model.set_attn_implementation(attn_implementation)
        return tb.model, tb.processor
    from streampro.modeling_streampro.modeling_streampro import StreamProForConditionalGeneration
    from streampro.modeling_streampro.processing_streampro import StreamProProcessor

    check_model_name(name)
    # No device move here: Trainer places the model (and DeepSpeed ZeRO-3 partitions it at load time).
    torch_dtype = torch.float32 if dtype in (None, "auto") else getattr(torch, dtype)
    extra = {"attn_implementation": attn_implementation} if attn_implementation is not None else {}
    model = StreamProForConditionalGeneration.from_pretrained(name, dtype=torch_dtype, **extra)  # strict loading
    return model, StreamProProcessor.from_pretrained(name, trust_remote_code=True)


def check_model_name(name: str) -> None:
    """A local path must be a checkpoint directory; anything else must be a Hub repo id (``org/name``).

    A Hub id goes to ``from_pretrained`` as it is (the Hub's StreamPro checkpoints, or the cache
    with ``HF_HUB_OFFLINE=1``); an existing path without ``config.json`` or a malformed id is refused
    here, before any download.
    """
    from pathlib import Path

    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model {name!r} is not a checkpoint directory (no config.json); pass a StreamPro checkpoint "
                "(`streampro convert-backbone BASE --out DIR`), a Hub id (org/name) or 'tiny:qwen2_5_vl' / 'tiny:qwen3_vl'"
            )
        return
    try:
        validate_repo_id(name)
        is_repo_id = name.count("/") == 1 and not name.startswith((".", "~"))
    except HFValidationError:
        is_repo_id = False
    if not is_repo_id:
        raise FileNotFoundError(
            f"model {name!r} is not a checkpoint directory (no such directory) nor a Hub repo id (org/name); pass a "
            "StreamPro checkpoint directory, a Hub id or 'tiny:qwen2_5_vl' / 'tiny:qwen3_vl'"
        )


def lora_config(model_args, processor):
    """LoRA on the language model's linear layers only, decision-token embedding rows trainable.

    The regex keeps adapters off the vision tower (whose blocks also have q/k/v-like names);
    ``trainable_token_indices`` trains just the decision rows of the input embeddings
    (``</Silence>`` / ``</Response>``, and ``</Standby>`` for a three-state model; peft's
    TrainableTokens), not the whole vocabulary.
    """
    from peft import LoraConfig

    names = model_args.lora_target_modules or list(DEFAULT_LORA_TARGETS)
    if model_args.lora_modules_to_save:
        raise ValueError(
            "lora_modules_to_save is not supported: TRL's fused LM head reads lm_head.weight directly, so a saved "
            "copy would not be trained; decision-token embeddings are trained through trainable_token_indices"
        )
    return LoraConfig(
        task_type=model_args.lora_task_type,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        bias="none",
        target_modules=rf"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.({'|'.join(names)})",
        trainable_token_indices={"embed_tokens": list(processor.decision_token_ids)},
    )


def expose_lm_head_bias(model) -> None:
    """Let TRL's fused LM head read ``lm_head.bias`` through peft's token wrapper (tied embeddings).

    With tied embeddings (the real Qwen-VL 3B/4B), peft wraps ``lm_head`` in the same
    ``TrainableTokensWrapper`` as the embeddings, which proxies ``weight`` (base + trained decision
    rows, differentiable) but not ``bias``; trl 1.16's fused head reads both and would fail. The
    wrapped layer's own bias (None for Qwen-VL) is exposed on the wrapper.
    """
    from peft.utils.other import TrainableTokensWrapper

    head = model.get_output_embeddings()
    if isinstance(head, TrainableTokensWrapper):
        head.bias = head.original_module.bias


def load_records(path: str, limit: int | None = None):
    """SFT records JSONL → a ``datasets.Dataset`` (clear errors for a missing or empty file)."""
    from pathlib import Path

    from datasets import Dataset

    from streampro.jsonl import iter_jsonl

    if not Path(path).is_file():
        raise FileNotFoundError(f"SFT records file {path} does not exist (make one with `streampro data build sft`)")
    rows = [row for _, row in iter_jsonl(path)]
    if not rows:
        raise ValueError(f"SFT records file {path} holds no records")
    rows = rows[:limit] if limit is not None else rows
    # Dataset.from_list takes its columns from the first row: give every row the optional fields any row has
    # (training windows; standby turns, absent from records built before them: None, which a three-state
    # collator refuses by record).
    for key in ("window", "standby"):
        if any(key in row for row in rows) and not all(key in row for row in rows):
            rows = [{key: None, **row} for row in rows]
    return Dataset.from_list(rows)


def check_standby_labels(records, processor) -> None:
    """Three-state training needs every record's ``standby`` turns: checked before training, by the
    collator's own rule (a RecordError names the first record without them)."""
    from streampro.dataset_scripts.collator import standby_argument

    if records is None:
        return
    for row in records.select_columns([c for c in ("id", "standby") if c in records.column_names]):
        standby_argument(row, processor)


def set_decision_states(model, processor, states: int, seed: int = 0) -> None:
    """Make ``model`` / ``processor`` have ``states`` decision states (``decision_states``, docs/training.md).

    3 on a two-state model adds ``</Standby>`` (:func:`streampro.backbones.add_standby_token`; the
    saved checkpoint is then three-state); a three-state model is refused with 2: it would stay
    three-state at inference while its loss no longer knew ``</Standby>`` as a decision.
    """
    from streampro.errors import UserError

    if processor.standby_token_id is not None and states == 2:
        raise UserError(
            f"the start model is three-state (its tokenizer has </Standby>, id {processor.standby_token_id}) but "
            "decision_states is 2",
            "pass --decision_states 3 (records need their `standby` turns), or start from a two-state checkpoint",
        )
    if states == 3 and processor.standby_token_id is None:
        from streampro.backbones import add_standby_token

        token_id = add_standby_token(processor.tokenizer, model, seed=seed)  # the processor reads it from its tokenizer
        logger.info("decision_states 3: added </Standby> (id %d) to the start model", token_id)


def build_trainer(script_args, training_args, model_args):
    """Model, data, collator and :class:`StreamProSFTTrainer` from parsed arguments."""
    from streampro.dataset_scripts.collator import StreamingSFTCollator
    from streampro.trainer.sft_trainer import StreamProSFTTrainer

    model, processor = load_model(script_args.model, script_args.tiny_seed, model_args.dtype,
                                  model_args.attn_implementation)
    set_decision_states(model, processor, script_args.decision_states, training_args.seed)
    model.train()
    collator = StreamingSFTCollator(
        processor,
        frames_root=script_args.frames_root,
        frame_cache_dir=script_args.frame_cache_dir,
        max_pixels=script_args.max_pixels,
        pack=training_args.pack_streams,
    )
    train = load_records(script_args.train_file, script_args.max_train_samples)
    evals = load_records(script_args.eval_file) if script_args.eval_file else None
    if processor.standby_token_id is not None:  # before training, not at the first batch that has such a record
        for data in (train, evals):
            check_standby_labels(data, processor)
    trainer = StreamProSFTTrainer(
        model=model,
        args=training_args,
        data_collator=collator,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=processor,
        peft_config=lora_config(model_args, processor) if model_args.use_peft else None,
    )
    expose_lm_head_bias(trainer.model)
    return trainer


def save_final(trainer, output_dir: str) -> None:
    """Save a plain StreamPro checkpoint plus processor and remote code (a LoRA run is merged first).

    Full fine-tuning goes through ``trainer.save_model``, which gathers FSDP / ZeRO-3 shards and
    saves the processor; a LoRA model is merged on each rank (single GPU / DDP) and saved by rank 0.
    """
    from peft import PeftModel

    if not isinstance(trainer.model, PeftModel):
        trainer.save_model(output_dir)
        return
    merged = trainer.model.merge_and_unload()
    if trainer.accelerator.is_main_process:
        merged.save_pretrained(output_dir)
        trainer.processing_class.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> int:
    """``streampro train sft --config RECIPE.yaml [--field value ...]`` (``--help``: the StreamPro fields)."""
    from streampro.trainer.script import run_stage
    from streampro.trainer.sft_config import SFTScriptArguments, StreamProSFTConfig
    from trl import ModelConfig

    return run_stage("sft", (SFTScriptArguments, StreamProSFTConfig, ModelConfig), build_trainer, argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
