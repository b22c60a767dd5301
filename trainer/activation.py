"""StreamBridge's activation model: train the per-frame "respond now?" score (docs/activation.md).

Run (tiny CPU recipe on StreamPro-Synth; data first with ``streampro data synth --out data/synth``)::

    streampro train activation --config recipes/activation/tiny_synth_cpu.yaml
    streampro train activation --config recipes/activation/tiny_synth_cpu.yaml --max_steps 5 --output_dir runs/act

Data: raw samples (``raw/{split}.jsonl``, dataset_scripts/schema.py) or SFT records
(``sft/{split}.jsonl``). A raw sample becomes a stream by the SFT builder's own placement rules
(``build_sft_record``: each answer on the turn of its best response time t*), so both give the
same streams. Each question's stream, from the question's turn on, is cut into windows of
``window_frames`` frames; each window is one sequence (question, then frames each followed by
``<ACT>``) and every frame gets a 0/1 label by :func:`frame_labels`, the StreamBridge rule: the
last ``positive_percent`` % of the frames of each segment ending in a response are positive.

Fields come from :class:`ActivationScriptArguments` (model and data), :class:`ActivationTrainingConfig`
(transformers' ``TrainingArguments`` plus the loss and freezing options) and TRL's ``ModelConfig``
(``dtype``). The final model is saved to ``output_dir`` with its processor and remote code, loadable
with ``AutoModel.from_pretrained(DIR, trust_remote_code=True)``.
"""

from __future__ import annotations

import logging
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

logger = logging.getLogger(__name__)

# The share of a segment's frames labelled positive when a recipe gives none. The StreamBridge
# material in docs/method.md §7 names the rule ("the last P % of frames") but no value of P.
DEFAULT_POSITIVE_PERCENT = 20.0
# Frames per training window (and, by default, per scoring window of the activation protocol).
DEFAULT_WINDOW_FRAMES = 16
# Frames decoded per video kept in memory by the collator (StreamPro-Synth clips are tiny).
FRAME_MEMORY = 64


# --------------------------------------------------------------------------------------------
# The label rule
# --------------------------------------------------------------------------------------------


def frame_labels(question_turn: int, response_turns, num_turns: int, positive_percent: float) -> list[int]:
    """0/1 labels of turns ``question_turn .. num_turns - 1`` (index 0 is the question's turn).

    The turns from the question on are cut into segments, each ending on a response's turn: the
    first runs from the question's turn to the first response, each next one from the turn after
    the previous response to the next response. The last ``ceil(P/100 · n)`` turns of a segment of
    n turns are positive (so the response's own turn always is); the other turns, and every turn
    after the last response, are negative. Responses on one turn count once.
    """
    if not 0 < positive_percent <= 100:
        raise ValueError(f"positive_percent must be in (0, 100], got {positive_percent}")
    if not 0 <= question_turn < num_turns:
        raise ValueError(f"question turn {question_turn} is outside the stream of {num_turns} turns")
    turns = sorted({int(r) for r in response_turns})
    bad = [r for r in turns if not question_turn <= r < num_turns]
    if bad:
        raise ValueError(f"response turns {bad} are outside turns {question_turn}..{num_turns - 1} (question to last frame)")
    labels = [0] * (num_turns - question_turn)
    start = question_turn
    for r in turns:
        n = r - start + 1
        positives = math.ceil(positive_percent / 100 * n - 1e-9)
        for k in range(r - positives + 1, r + 1):
            labels[k - question_turn] = 1
        start = r + 1
    return labels


# --------------------------------------------------------------------------------------------
# Data: streams, windows, collator
# --------------------------------------------------------------------------------------------


def read_streams(path: str | Path, fps: float = 1.0, limit: int | None = None) -> list[dict]:
    """Raw samples or SFT records → streams ``{id, video, fps, num_turns, question, question_turn, response_turns}``.

    One stream per question: a record with several questions gives one per question, ending at
    the next question's turn (its responses after that belong to the next one).
    """
    from streampro.dataset_scripts.builders import build_sft_record
    from streampro.dataset_scripts.schema import validate_raw

    from streampro.jsonl import iter_jsonl

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist; make StreamPro-Synth with `streampro data synth "
                                "--out DIR`, or pass another file (--train_file / --eval_file)")
    streams, rows = [], 0
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        rows += 1
        if "answers" in row:  # a raw sample: place its answers as the SFT builder does
            record = build_sft_record(validate_raw(row, where), fps)
            if record is None:
                logger.info("%s: sample %r gives no stream (no response after its question)", where, row.get("id"))
                continue
        elif "responses" in row and "questions" in row:
            record = row
        else:
            raise ValueError(f"{where}: neither a raw sample (answers) nor an SFT record (questions, responses)")
        if record.get("window"):
            raise ValueError(f"{where}: a windowed SFT record; the activation trainer cuts its own windows: pass "
                             "records built without --window-turns, or the raw samples")
        questions = sorted(record["questions"], key=lambda q: int(q["turn"]))
        for i, q in enumerate(questions):
            q_turn = int(q["turn"])
            end = int(questions[i + 1]["turn"]) if i + 1 < len(questions) else int(record["num_turns"])
            if end <= q_turn:
                continue
            responses = [int(r["turn"]) for r in record["responses"] if q_turn <= int(r["turn"]) < end]
            streams.append({
                "id": f"{record['id']}#q{i}" if len(questions) > 1 else str(record["id"]),
                "video": record["video"], "fps": float(record["fps"]), "num_turns": int(record["num_turns"]),
                "question": q["text"], "question_turn": q_turn, "end_turn": end, "response_turns": responses,
            })
        if limit is not None and len(streams) >= limit:
            return streams[:limit]
    if not rows:
        raise ValueError(f"{path} holds no samples")
    if not streams:
        raise ValueError(f"{path}: no streams (every sample lacks a response after its question)")
    return streams


def stream_windows(stream: dict, window_frames: int, positive_percent: float) -> list[dict]:
    """A stream's training windows: consecutive runs of ``window_frames`` turns from the question's turn on."""
    if window_frames < 1:
        raise ValueError(f"window_frames must be >= 1, got {window_frames}")
    q, end = stream["question_turn"], stream["end_turn"]
    labels = frame_labels(q, stream["response_turns"], end, positive_percent)
    windows = []
    for start in range(q, end, window_frames):
        turns = list(range(start, min(start + window_frames, end)))
        windows.append({"stream": stream, "turns": turns, "labels": [labels[k - q] for k in turns]})
    return windows


class ActivationWindows(torch.utils.data.Dataset):
    """Training windows of a data file (frames are decoded by the collator)."""

    def __init__(self, streams: list[dict], window_frames: int, positive_percent: float):
        self.windows = [w for s in streams for w in stream_windows(s, window_frames, positive_percent)]
        positives = sum(sum(w["labels"]) for w in self.windows)
        total = sum(len(w["labels"]) for w in self.windows)
        logger.info("%d streams → %d windows, %d frames, %d positive (%.1f %%)", len(streams), len(self.windows),
                    total, positives, 100 * positives / max(total, 1))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        return self.windows[i]


class ActivationCollator:
    """Windows → a padded batch of the activation processor (frames decoded once per video, kept in memory)."""

    def __init__(self, processor, frames_root: str | None = None, frame_cache_dir: str | None = None,
                 max_pixels: int | None = None):
        self.processor, self.frames_root = processor, frames_root
        self.frame_cache_dir, self.max_pixels = frame_cache_dir, max_pixels
        self._frames: OrderedDict[str, list] = OrderedDict()

    def frames(self, stream: dict) -> list:
        from streampro.dataset_scripts.frames import load_record_frames

        key = stream["video"]
        if key not in self._frames:
            if self.frames_root is None and not Path(key).is_absolute():
                raise ValueError(f"stream {stream['id']!r}: video {key!r} is relative; set frames_root (the dataset folder)")
            self._frames[key] = load_record_frames(stream, self.frames_root, self.frame_cache_dir, self.max_pixels)
            while len(self._frames) > FRAME_MEMORY:
                self._frames.popitem(last=False)
        self._frames.move_to_end(key)
        return self._frames[key]

    def __call__(self, windows: list[dict]) -> dict:
        encodings = []
        for w in windows:
            frames = self.frames(w["stream"])
            encodings.append(self.processor.encode(w["stream"]["question"], [frames[k] for k in w["turns"]],
                                                   w["turns"], w["labels"], fps=w["stream"]["fps"]))
        return dict(self.processor.pad(encodings))


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def activation_from_backbone(base_model, tokenizer, image_processor, seed: int = 0):
    """(activation model, processor) from a Qwen-VL model (transformers' own or StreamPro) and its tokenizer.

    Adds ``<ACT>`` to the tokenizer; its embedding row starts at the mean of the existing rows plus
    1 % noise (as ``streampro convert-backbone`` starts the decision tokens); the backbone's vision
    tower and language model are copied; the score head starts from the backbone's initialisation.
    """
    from streampro.modeling_streampro.configuration_activation import StreamProActivationConfig
    from streampro.modeling_streampro.modeling_activation import StreamProActivationModel
    from streampro.modeling_streampro.processing_activation import ACT_TOKEN, StreamProActivationProcessor

    had_act = ACT_TOKEN in tokenizer.get_vocab()
    if not had_act:
        tokenizer.add_special_tokens({"additional_special_tokens": [ACT_TOKEN]}, replace_extra_special_tokens=False)
    act_id = tokenizer.convert_tokens_to_ids(ACT_TOKEN)
    embed = base_model.get_input_embeddings().weight.detach()
    rows = max(embed.shape[0], act_id + 1)
    config = StreamProActivationConfig.from_backbone_config(base_model.config, act_token_id=act_id)
    config.text_config.vocab_size = rows
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = StreamProActivationModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    state = {k: v for k, v in base_model.model.state_dict().items() if k != "language_model.embed_tokens.weight"}
    missing, unexpected = model.model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"language_model.embed_tokens.weight"}:
        raise ValueError(f"backbone weights do not fit the activation model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    with torch.no_grad():
        new = model.get_input_embeddings().weight
        new[: embed.shape[0]] = embed.to(new.dtype)
        if not had_act or act_id >= embed.shape[0]:
            gen = torch.Generator().manual_seed(seed)
            mean, std = embed.float().mean(0), embed.float().std(0)
            new[act_id] = (mean + torch.randn(embed.shape[1], generator=gen) * std * 0.01).to(new.dtype)
    return model, StreamProActivationProcessor(image_processor=image_processor, tokenizer=tokenizer)


def load_activation_model(name: str, tiny_seed: int = 0, dtype: str | None = None):
    """(activation model, processor) for training from ``name``.

    ``tiny:qwen2_5_vl`` / ``tiny:qwen3_vl`` (a random tiny backbone), an activation checkpoint (training
    goes on), or a base Qwen2.5-VL / Qwen3-VL or StreamPro checkpoint directory (its backbone is copied).
    """
    import json

    torch_dtype = torch.float32 if dtype in (None, "auto") else getattr(torch, dtype)
    if name.startswith("tiny:"):
        from streampro.backbones import BACKBONES, build_tiny_backbone

        backbone = name.removeprefix("tiny:")
        if backbone not in BACKBONES:
            raise ValueError(f"model {name!r}: unknown tiny backbone; use one of {[f'tiny:{b}' for b in BACKBONES]}")
        tb = build_tiny_backbone(backbone, seed=tiny_seed, streampro=False)
        return activation_from_backbone(tb.model, tb.processor.tokenizer, tb.processor.image_processor, seed=tiny_seed)
    path = Path(name)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model {name!r} is not a checkpoint directory (no config.json); pass a directory or "
                                "'tiny:qwen2_5_vl' / 'tiny:qwen3_vl'")
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type == "streampro_activation":
        from streampro.modeling_streampro.modeling_activation import StreamProActivationModel
        from streampro.modeling_streampro.processing_activation import StreamProActivationProcessor

        return (StreamProActivationModel.from_pretrained(path, dtype=torch_dtype),
                StreamProActivationProcessor.from_pretrained(path, trust_remote_code=True))
    if model_type == "streampro":
        from streampro.loading import load_model_and_processor

        base, processor = load_model_and_processor(path, device="cpu", dtype=torch_dtype)
        return activation_from_backbone(base, processor.tokenizer, processor.image_processor, seed=tiny_seed)
    if model_type in ("qwen2_5_vl", "qwen3_vl"):
        from streampro.evaluation.protocols import load_baseline

        base, processor = load_baseline(path, "cpu", dtype=torch_dtype)
        return activation_from_backbone(base, processor.tokenizer, processor.image_processor, seed=tiny_seed)
    raise ValueError(f"model {name!r} has model_type {model_type!r}; pass a Qwen2.5-VL / Qwen3-VL, StreamPro or "
                     "activation checkpoint")


# --------------------------------------------------------------------------------------------
# Configuration and trainer
# --------------------------------------------------------------------------------------------


@dataclass
class ActivationScriptArguments:
    """Model and data of ``streampro train activation``."""

    model: str = field(
        default="tiny:qwen2_5_vl",
        metadata={"help": "Backbone: 'tiny:qwen2_5_vl' / 'tiny:qwen3_vl' (random tiny), a base Qwen-VL or StreamPro "
                          "checkpoint (its backbone is copied, <ACT> added), or an activation checkpoint."},
    )
    tiny_seed: int = field(default=0, metadata={"help": "Seed of the tiny backbone and of the new <ACT> row."})
    train_file: str = field(default="data/synth/raw/train.jsonl",
                            metadata={"help": "Raw samples or SFT records (JSONL) to train on."})
    eval_file: str | None = field(default=None, metadata={"help": "Raw samples or SFT records to evaluate on."})
    frames_root: str | None = field(default="data/synth",
                                    metadata={"help": "Folder the records' relative video paths start from."})
    frame_cache_dir: str | None = field(default=None, metadata={"help": "Keep decoded frames here (.npz)."})
    max_pixels: int | None = field(default=None, metadata={"help": "Downscale frames to at most this many pixels."})
    fps: float = field(default=1.0, metadata={"help": "Frames per second of the streams built from raw samples."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N streams."})


@dataclass
class ActivationTrainingConfig(TrainingArguments):
    """``TrainingArguments`` plus the label rule, the window and the loss (docs/activation.md).

    Re-defaulted: ``remove_unused_columns=False`` (windows go untouched to the collator),
    ``logging_steps`` 1.
    """

    positive_percent: float = field(
        default=DEFAULT_POSITIVE_PERCENT,
        metadata={"help": "P: the last P percent of each segment's frames (the response's frame included) are positive."},
    )
    window_frames: int = field(default=DEFAULT_WINDOW_FRAMES,
                               metadata={"help": "Frames per training window (after the question)."})
    pos_weight: float = field(default=1.0, metadata={"help": "BCE weight of positive frames (1: plain BCE)."})
    freeze_vision: bool = field(default=True, metadata={
        "help": "Freeze the vision encoder except its merger/projector."})
    freeze_projector: bool = field(default=False, metadata={
        "help": "With freeze_vision, also freeze the merger/projector (the whole vision tower stays fixed)."})
    remove_unused_columns: bool = False
    logging_steps: float = 1

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.positive_percent <= 100:
            raise ValueError(f"positive_percent must be in (0, 100], got {self.positive_percent}")
        if self.window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {self.window_frames}")
        if self.pos_weight <= 0:
            raise ValueError(f"pos_weight must be > 0, got {self.pos_weight}")


class ActivationTrainer(Trainer):
    """``Trainer`` with the activation loss: BCE at ``<ACT>`` positions, positives weighted by ``pos_weight``."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        scored = labels >= 0
        weight = torch.ones_like(labels[scored])
        weight[labels[scored] > 0.5] = self.args.pos_weight
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            outputs.logits[scored], labels[scored].to(outputs.logits.dtype), weight=weight)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss = self.compute_loss(model, dict(inputs))
        return loss.detach(), None, None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save as ``Trainer`` does (weights, remote code, processor), plus the activation model's card."""
        super().save_model(output_dir, _internal_call)
        if self.is_world_process_zero():
            write_activation_card(Path(output_dir or self.args.output_dir), self.accelerator.unwrap_model(self.model),
                                  self.args, self.state.global_step)


ACTIVATION_CARD = """
# {name}

StreamBridge-style **activation model** (docs/activation.md of StreamPro): a {backbone} backbone whose LM head is
replaced by a binary score head read at a learnable `<ACT>` token after each frame. Given a question and the
frames since it was asked, it scores after every frame whether a response is due; an answering model then
answers (`streampro evaluate --protocol activation`).

Training: `streampro train activation`, {steps} optimiser steps, learning rate {lr:g}, BCE on per-frame labels
(the last {p:g} % of the frames of each segment ending in a response are positive), windows of {window} frames.

```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)
inputs = processor("Tell me when the square turns blue.", frames)   # frames: PIL images at 1 fps
scores = model.act_scores(**inputs)[0]                               # one score per frame
```

```bash
streampro evaluate --protocol activation --activation-model {repo} --model ANSWERER \\
    --benchmark bench.jsonl --video-root videos/ --out runs/activation
```
"""


def write_activation_card(directory: Path, model, args, steps: int) -> Path:
    """A short ``README.md`` model card (huggingface_hub ``ModelCard``) for an activation checkpoint."""
    from huggingface_hub import ModelCard, ModelCardData

    backbone = {"qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}.get(model.config.backbone, model.config.backbone)
    name = args.hub_model_id.split("/")[-1] if args.hub_model_id else directory.resolve().name
    data = ModelCardData(library_name="transformers", license="apache-2.0",
                         tags=["streampro", "activation-model", "streambridge", model.config.backbone])
    body = ACTIVATION_CARD.format(name=name, backbone=backbone, steps=steps, lr=args.learning_rate,
                                  p=args.positive_percent, window=args.window_frames,
                                  repo=args.hub_model_id or f"<org>/{name}")
    path = directory / "README.md"
    directory.mkdir(parents=True, exist_ok=True)
    ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").save(path)
    return path


def build_trainer(script_args, training_args, model_args):
    """Model, windows, collator and :class:`ActivationTrainer` from parsed arguments."""
    from streampro.trainer.sft_trainer import apply_vision_freeze

    from streampro.errors import UserError

    try:  # the recipe's model and data files: a wrong path or a bad record is the user's to fix
        model, processor = load_activation_model(script_args.model, script_args.tiny_seed, model_args.dtype)
        train = ActivationWindows(read_streams(script_args.train_file, script_args.fps, script_args.max_train_samples),
                                  training_args.window_frames, training_args.positive_percent)
        evals = None
        if script_args.eval_file:
            evals = ActivationWindows(read_streams(script_args.eval_file, script_args.fps),
                                      training_args.window_frames, training_args.positive_percent)
    except (FileNotFoundError, ValueError) as e:
        raise UserError.from_exception(e, "fix the recipe's model / train_file / eval_file (or override it: "
                                          "--train_file PATH)") from e
    apply_vision_freeze(model, training_args)
    model.train()
    collator = ActivationCollator(processor, script_args.frames_root, script_args.frame_cache_dir, script_args.max_pixels)
    return ActivationTrainer(model=model, args=training_args, data_collator=collator, train_dataset=train,
                             eval_dataset=evals, processing_class=processor)


def main(argv: list[str] | None = None) -> int:
    """``streampro train activation --config RECIPE.yaml [--field value ...]`` (``--help``: the StreamPro fields)."""
    from streampro.trainer.script import run_stage
    from trl import ModelConfig

    return run_stage("activation", (ActivationScriptArguments, ActivationTrainingConfig, ModelConfig), build_trainer, argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
