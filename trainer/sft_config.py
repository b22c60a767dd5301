"""Configuration of StreamPro SFT: the trainer config (``StreamProSFTConfig``) and the script's data/model arguments.

``StreamProSFTConfig`` subclasses TRL's ``SFTConfig`` and declares only new or re-defaulted
fields. ``SFTScriptArguments`` holds what the ``trainer/sft.py`` script needs to build the model
and the data (TRL scripts keep these apart from the trainer config in the same way). LoRA options
come from TRL's own ``ModelConfig`` (``use_peft``, ``lora_r``, ...). A recipe YAML may use any
field of the three; ``TrlParser`` rejects unknown keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streampro.trainer.checkpointing import ActivationCheckpointingByDefault
from trl import SFTConfig

LOSS_TYPES = ("cb_stream", "focal", "ce")


@dataclass
class StreamProSFTConfig(ActivationCheckpointingByDefault, SFTConfig):
    """``SFTConfig`` plus the streaming-decision loss options (docs/method.md §4).

    Re-defaulted: ``learning_rate`` 1e-5 (the paper's), ``remove_unused_columns=False`` and
    ``dataset_kwargs={"skip_prepare_dataset": True}`` (records go untouched to the streaming
    collator, which decodes frames itself), ``max_length=None`` (streams are never truncated: a
    cut stream would drop image features; training windows bound them instead), ``logging_steps`` 1.
    TRL's ``packing`` / ``padding_free`` are refused: ``pack_streams`` packs whole streams.
    """

    loss_type: str = field(
        default="cb_stream",
        metadata={
            "help": "Token loss: 'cb_stream' (class-balanced decision weights from the effective number of samples, "
            "language tokens weighted by text_weight; docs/method.md §4), 'focal' (Streamo's focal loss on decision tokens), "
            "or 'ce' (plain mean cross-entropy over supervised tokens).",
            "choices": list(LOSS_TYPES),
        },
    )
    cb_beta: float = field(
        default=0.9999,
        metadata={"help": "β of the effective number E = (1 − β^n) / (1 − β) for CB-Stream class weights; in [0, 1)."},
    )
    text_weight: float = field(
        default=2.0,
        metadata={"help": "λ_text: CB-Stream weight of language tokens (answer text and the <|im_end|> after it)."},
    )
    focal_gamma: float = field(
        default=2.0, metadata={"help": "γ of the focal loss (loss_type='focal'): weight α_c · (1 − p_t)^γ."}
    )
    freeze_vision: bool = field(
        default=True,
        metadata={
            "help": "Freeze the vision encoder (model.model.visual) except its merger/projector, which stays "
            "trainable with the LLM (the paper's setup)."
        },
    )
    freeze_projector: bool = field(
        default=False,
        metadata={
            "help": "With freeze_vision, also freeze the merger/projector: the whole vision tower stays fixed. For a "
            "randomly initialised tiny tower (streampro reproduce) a fixed random-feature encoder keeps frames "
            "apart, while training it at a tiny model's learning rate collapsed its features (docs/reproduce.md)."
        },
    )
    pack_streams: bool = field(
        default=False,
        metadata={
            "help": "Padding-free packing: concatenate each micro-batch's streams into one row with per-stream "
            "positions; attention stays inside each stream (block-diagonal mask with sdpa/eager, FlashAttention "
            "varlen with attn_implementation=flash_attention_2). Same loss and gradients as padding "
            "(docs/training.md, 'Packing'). TRL's own packing / padding_free do not apply to streaming records."
        },
    )
    max_tokens_per_batch: int | None = field(
        default=None,
        metadata={
            "help": "Token budget: fill each training micro-batch with records up to this many tokens (their sum when "
            "pack_streams, else batch size × longest), length-sorted, every record once per epoch; replaces "
            "per_device_train_batch_size for training (docs/training.md, 'Token budgets')."
        },
    )
    length_bucket_size: int | None = field(
        default=None,
        metadata={
            "help": "With max_tokens_per_batch: sort by length within buckets of this many shuffled records "
            "(default: the whole dataset, the least padding)."
        },
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Initial AdamW learning rate (paper: 1e-5)."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep every record column: the streaming collator needs video, turns and texts."},
    )
    dataset_kwargs: dict[str, Any] | str | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "Kept as {'skip_prepare_dataset': True}: records are tokenised by the streaming collator."},
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Must stay None: streaming conversations are not truncated (image tokens would be cut)."},
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every N optimizer steps."})

    def __post_init__(self):
        super().__post_init__()  # ActivationCheckpointingByDefault, then TRL
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if not 0.0 <= self.cb_beta < 1.0:
            raise ValueError(f"cb_beta must be in [0, 1) (the paper uses 0.9999), got {self.cb_beta}")
        if self.text_weight < 0:
            raise ValueError(f"text_weight must be >= 0 (the paper uses 2.0), got {self.text_weight}")
        if self.focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0 (Streamo uses 2.0), got {self.focal_gamma}")
        if self.remove_unused_columns:
            raise ValueError(
                "remove_unused_columns must be False: the streaming collator reads the record columns "
                "(video, questions, responses) that the model's forward does not take"
            )
        if not (self.dataset_kwargs or {}).get("skip_prepare_dataset", False):
            raise ValueError(
                "dataset_kwargs must contain skip_prepare_dataset: true; TRL's text preparation does not apply to "
                f"streaming records (got {self.dataset_kwargs!r})"
            )
        if self.max_length is not None:
            raise ValueError(
                f"max_length must be None (got {self.max_length}): a truncated stream loses image tokens; bound "
                "stream lengths with training windows (`streampro data build sft --window-turns W`) and micro-batches "
                "with max_tokens_per_batch, or use smaller frames (max_pixels)"
            )
        if self.packing or self.padding_free:
            raise ValueError(
                "TRL's packing / padding_free do not apply to streaming records (they pack tokenised text); set them "
                "to false and use pack_streams: true (padding-free packing of whole streams, docs/training.md)"
            )
        if self.max_tokens_per_batch is not None and self.max_tokens_per_batch < 1:
            raise ValueError(f"max_tokens_per_batch must be >= 1 (or null: fixed batch sizes), got "
                             f"{self.max_tokens_per_batch}")
        if self.length_bucket_size is not None and self.length_bucket_size < 1:
            raise ValueError(f"length_bucket_size must be >= 1 (or null: the whole dataset), got "
                             f"{self.length_bucket_size}")


@dataclass
class SFTScriptArguments:
    """Model and data arguments of ``trainer/sft.py`` (the trainer config holds the optimisation)."""

    model: str = field(
        default="tiny:qwen2_5_vl",
        metadata={
            "help": "A StreamPro checkpoint: a local directory (e.g. from `streampro convert-backbone`), a Hub "
            "repo id (org/name), or 'tiny:qwen2_5_vl' / 'tiny:qwen3_vl' for a tiny randomly initialised model "
            "(CPU recipes, tests)."
        },
    )
    train_file: str | None = field(
        default=None, metadata={"help": "SFT records JSONL (from `streampro data build sft` or `streampro data synth`)."}
    )
    eval_file: str | None = field(default=None, metadata={"help": "Optional SFT records JSONL for evaluation."})
    frames_root: str | None = field(
        default=None,
        metadata={"help": "Directory the records' relative `video` paths are relative to (Synth: its --out dir)."},
    )
    frame_cache_dir: str | None = field(
        default=None, metadata={"help": "Optional directory for decoded-frame .npz caches (skips decoding next epoch)."}
    )
    max_pixels: int | None = field(
        default=None, metadata={"help": "Downscale frames to at most this many pixels before the image processor."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training records (smoke runs)."}
    )
    tiny_seed: int = field(default=0, metadata={"help": "Weight seed of a 'tiny:' model."})
    decision_states: int = field(
        default=2,
        metadata={
            "help": "2: </Silence> and </Response> (StreamPro). 3: also Streamo's </Standby>, trained on the records' "
            "`standby` turns; a two-state start model gets the token (embedding row = mean of the others + 1 %% "
            "noise, seeded by `seed`) and the final checkpoint is three-state (docs/training.md, 'Three states'). "
            "A three-state start model needs 3.",
            "choices": [2, 3],
        },
    )

    def __post_init__(self):
        # An empty string on the command line (`--eval_file ""`) switches an optional path off.
        for name in ("eval_file", "frames_root", "frame_cache_dir"):
            if getattr(self, name) == "":
                setattr(self, name, None)
        if self.train_file is None:
            raise ValueError("train_file is required: pass --train_file RECORDS.jsonl or set it in the recipe")
        if self.decision_states not in (2, 3):
            raise ValueError(f"decision_states must be 2 (silence, response) or 3 (plus standby), got "
                             f"{self.decision_states}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be >= 1, got {self.max_train_samples}")
