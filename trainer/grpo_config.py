"""Configuration of StreamPro GRPO: the trainer config (``StreamProGRPOConfig``) and the script's data/model arguments.

``StreamProGRPOConfig`` subclasses TRL's ``GRPOConfig`` and declares only new or re-defaulted
fields (docs/method.md §5: G = 8 rollouts at temperature 1.0, lr 1e-6, reward weights 0.1 / 0.45 / 0.45,
turn τ = 8). ``GRPOScriptArguments`` holds what ``trainer/grpo.py`` needs to build the model and
the data. A recipe YAML may use any field of both (and TRL's ``ModelConfig``); ``TrlParser``
rejects unknown keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streampro.metrics import JUDGES, TURN_TAU
from streampro.trainer.checkpointing import ActivationCheckpointingByDefault
from streampro.trainer.rewards import RUBRIC_JUDGES
from trl import GRPOConfig

from streampro.errors import UserError

VLLM_DOCS = 'docs/grpo.md, section "Rollouts on vLLM" (docs/grpo.md#rollouts-on-vllm)'


@dataclass
class StreamProGRPOConfig(ActivationCheckpointingByDefault, GRPOConfig):
    """``GRPOConfig`` plus the streaming-rollout and multi-grained reward options (docs/method.md §5).

    Re-defaulted: ``learning_rate`` 1e-6, ``temperature`` 1.0 and ``num_generations`` 8 (the
    paper's), ``loss_type`` "grpo", ``logging_steps`` 1, ``max_completion_length`` None (a
    completion is a whole trajectory, bounded by ``max_frames_per_rollout`` and
    ``max_new_tokens`` instead), ``use_vllm`` False (refused: rollouts run through the KV-cache
    streaming loop; docs/grpo.md "Rollouts on vLLM" says why).
    """

    # --- rewards ---------------------------------------------------------------------------
    format_weight: float = field(default=0.1, metadata={"help": "w_fmt: weight of the format reward R_fmt."})
    turn_weight: float = field(
        default=0.45, metadata={"help": "w_turn: weight of the turn-level F1 reward R_turn."}
    )
    traj_weight: float = field(
        default=0.45,
        metadata={"help": "w_traj: weight of the trajectory rubric reward R_traj (0 disables it)."},
    )
    turn_tau: float = field(
        default=TURN_TAU,
        metadata={"help": "τ of the turn-level reward (one value for every task; paper: 8)."},
    )
    turn_judge: str = field(
        default="lexical",
        metadata={
            "help": "Answer-accuracy judge of R_turn (the metric's judges): 'llm' is the paper's protocol on an "
            "OpenAI-compatible endpoint; 'lexical' / 'embedding' / 'exact' / 'contains' are offline approximations.",
            "choices": list(JUDGES),
        },
    )
    turn_judge_options: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword options of the turn judge, e.g. {'base_url': 'http://localhost:8000/v1', 'model': 'm', "
            "'cache_path': 'judge.sqlite'} for 'llm', {'method': 'rougeL'} for 'lexical'."
        },
    )
    rubric_judge: str = field(
        default="llm",
        metadata={
            "help": "Evaluator of R_traj: 'llm' (an LLM marks each rubric item pass/fail; the paper's) or 'offline' "
            "(an approximation that marks items by dimension from the ground truth, ignoring their wording).",
            "choices": list(RUBRIC_JUDGES),
        },
    )
    rubric_endpoint: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible API root of the rubric evaluator (rubric_judge='llm'), e.g. http://host:8000/v1."
        },
    )
    rubric_model: str | None = field(default=None, metadata={"help": "Model name of the rubric evaluator."})
    rubric_judge_options: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Extra keyword options of the rubric evaluator: for 'llm' api_key_env, cache_path, "
            "max_concurrency, timeout, max_retries; for 'offline' judge, tau, pass_threshold."
        },
    )
    # --- rollouts --------------------------------------------------------------------------
    fps: float = field(
        default=1.0, metadata={"help": "Frames (turns) per second of the rollouts (paper: 1)."}
    )
    window_turns: int = field(
        default=200,
        metadata={
            "help": "Sliding window of the streaming loop (paper: 200 turns). Must be >= max_frames_per_rollout: "
            "the loss is computed on the whole trajectory, which must equal the context the rollout saw."
        },
    )
    freeze_vision: bool = field(
        default=True,
        metadata={"help": "Freeze the vision encoder except its merger/projector (as in SFT)."},
    )
    freeze_projector: bool = field(
        default=False,
        metadata={"help": "With freeze_vision, also freeze the merger/projector (the whole vision tower stays fixed)."},
    )
    max_frames_per_rollout: int = field(
        default=200,
        metadata={
            "help": "Longest stream (frames) a rollout may have; longer samples are dropped by the script."
        },
    )
    max_new_tokens: int = field(
        default=64, metadata={"help": "Most answer tokens per response turn (after </Response>)."}
    )
    constrain_decision: bool = field(
        default=False,
        metadata={
            "help": "False (GRPO): the first token of each turn is sampled from the full vocabulary, so the policy "
            "can break the format and R_fmt means something. True: only </Silence> / </Response> (inference mode)."
        },
    )
    rollout_do_sample: bool = field(
        default=True,
        metadata={
            "help": "Sample rollouts at `temperature` (GRPO). False = greedy rollouts (debugging, tests)."
        },
    )
    batch_rollouts: bool = field(
        default=True,
        metadata={
            "help": "Step the G rollouts of a group together, one forward per frame (needs the sdpa or eager "
            "attention kernel; otherwise they run one by one). False = one by one; same rollouts for one seed."
        },
    )
    frames_root: str | None = field(
        default=None,
        metadata={
            "help": "Directory the samples' relative `video` paths are relative to (Synth: its --out dir)."
        },
    )
    frame_cache_dir: str | None = field(
        default=None, metadata={"help": "Optional directory for decoded-frame .npz caches (empty = off)."}
    )
    max_pixels: int | None = field(
        default=None,
        metadata={"help": "Downscale frames to at most this many pixels before the image processor."},
    )
    # --- re-defaulted TRL fields -------------------------------------------------------------
    learning_rate: float = field(
        default=1e-6, metadata={"help": "Initial AdamW learning rate (paper: 1e-6)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Rollout sampling temperature (paper: 1.0)."})
    num_generations: int | None = field(default=8, metadata={"help": "G: rollouts per sample (paper: 8)."})
    loss_type: str = field(
        default="grpo",
        metadata={
            "help": "TRL loss aggregation; 'grpo' averages each trajectory's policy tokens (see GRPOConfig)."
        },
    )
    max_completion_length: int | None = field(
        default=None,
        metadata={
            "help": "Unused (must stay None): trajectories are bounded by max_frames_per_rollout and max_new_tokens."
        },
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every N optimizer steps."})

    def __post_init__(self):
        super().__post_init__()  # ActivationCheckpointingByDefault, then TRL
        # An empty string (`--frames_root ""`, `frame_cache_dir: ""`) switches an optional path off, as in SFT.
        for name in ("frames_root", "frame_cache_dir"):
            if getattr(self, name) == "":
                setattr(self, name, None)
        for name in ("turn_judge_options", "rubric_judge_options"):
            if isinstance(getattr(self, name), str):  # the CLI passes dicts as JSON strings
                import json

                setattr(self, name, json.loads(getattr(self, name)))
        weights = (self.format_weight, self.turn_weight, self.traj_weight)
        if any(w < 0 for w in weights) or not any(weights):
            raise ValueError(
                f"reward weights must be >= 0 and not all 0, got {weights} (paper: 0.1, 0.45, 0.45)"
            )
        if self.reward_weights is not None:
            raise ValueError(
                "set format_weight / turn_weight / traj_weight instead of reward_weights (the reward functions are "
                "built from them)"
            )
        if self.turn_tau <= 0:
            raise ValueError(f"turn_tau must be > 0 (paper: 8), got {self.turn_tau}")
        if self.turn_judge not in JUDGES:
            raise ValueError(f"turn_judge must be one of {list(JUDGES)}, got {self.turn_judge!r}")
        if self.rubric_judge not in RUBRIC_JUDGES:
            raise ValueError(f"rubric_judge must be one of {list(RUBRIC_JUDGES)}, got {self.rubric_judge!r}")
        if (
            self.traj_weight
            and self.rubric_judge == "llm"
            and not (self.rubric_endpoint and self.rubric_model)
        ):
            raise ValueError(
                "rubric_judge='llm' needs rubric_endpoint and rubric_model (an OpenAI-compatible evaluator); "
                "set them, use rubric_judge='offline' (an approximation), or traj_weight=0"
            )
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0 (paper: 1), got {self.fps}")
        if self.max_new_tokens < 1 or self.max_frames_per_rollout < 1:
            raise ValueError("max_new_tokens and max_frames_per_rollout must be >= 1")
        if self.window_turns < self.max_frames_per_rollout:
            raise ValueError(
                f"window_turns ({self.window_turns}) must be >= max_frames_per_rollout ({self.max_frames_per_rollout}): "
                "the policy loss is computed on the whole trajectory, so no turn may slide out of the rollout's context"
            )
        if self.rollout_do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling rollouts, got {self.temperature}")
        if self.use_vllm:
            # UserError: the CLI prints it as one line. The section name is stable (tests check it).
            raise UserError(
                "use_vllm is not supported: a StreamPro rollout adds a new frame inside the completion at every "
                "turn, and TRL's vLLM paths (generate, rollout_func) cannot pass images inside a completion to "
                "the training forward",
                f"leave use_vllm false (rollouts run, batched, in the PyTorch streaming loop); {VLLM_DOCS} says "
                "where TRL stops and what upstream change would allow it",
            )
        if self.max_completion_length is not None:
            raise ValueError(
                "max_completion_length must be None; bound trajectories with max_frames_per_rollout / max_new_tokens"
            )
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "only multi_objective_aggregation='sum_then_normalize' is supported (R = Σ w_i R_i, docs/method.md §5)"
            )
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False: the rewards read the RL-sample columns")

    @property
    def reward_weight_map(self) -> dict[str, float]:
        return {"format": self.format_weight, "turn": self.turn_weight, "traj": self.traj_weight}


@dataclass
class GRPOScriptArguments:
    """Model and data arguments of ``trainer/grpo.py`` (the trainer config holds the rest)."""

    model: str = field(
        default="tiny:qwen2_5_vl",
        metadata={
            "help": "A StreamPro checkpoint: a local directory (usually the SFT output), a Hub repo id (org/name), "
            "or 'tiny:qwen2_5_vl' / 'tiny:qwen3_vl' for a tiny randomly initialised model (CPU recipes, tests)."
        },
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "RL samples JSONL (`streampro data build rl`, Synth's rl/{split}.jsonl, or with rubrics)."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N RL samples."})
    tasks: list[str] | None = field(
        default=None, metadata={"help": "Keep only these task codes (paper's RL tasks: EU OU AA TP TG GP)."}
    )
    tiny_seed: int = field(default=0, metadata={"help": "Weight seed of a 'tiny:' model."})

    def __post_init__(self):
        if self.train_file is None:
            raise ValueError(
                "train_file is required: pass --train_file RL_SAMPLES.jsonl or set it in the recipe"
            )
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be >= 1, got {self.max_train_samples}")
