"""The activation-checkpointing default shared by the SFT and GRPO configs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ActivationCheckpointingByDefault:
    """Checkpointing on by default under its current name, ``activation_checkpointing``.

    TRL re-defaults the deprecated alias ``gradient_checkpointing`` to True, which makes transformers
    5.23 warn on every config; mixed in before TRL's config, this gives the same default without the
    warning. A recipe sets ``activation_checkpointing``; either name set explicitly wins.
    """

    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing (transformers 5.23); use that."}
    )

    def __post_init__(self):
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True
        super().__post_init__()
