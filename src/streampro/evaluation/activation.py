"""The activation protocol: StreamBridge's decoupled activation model + an answering model (docs/activation.md).

``streampro evaluate --protocol activation --activation-model ACT_DIR --model ANSWERER``. Per frame:

1. The frame's vision features enter the answerer's memory buffer (every frame, from the first:
   StreamBridge's MB ← I(F_t)), and the buffer is compressed if it exceeds ``token_budget``.
2. From the question's turn on, the activation model scores the frame: one forward over the
   question and the most recent ``window_frames`` frames since the question, each followed by
   ``<ACT>``; the score is the sigmoid at the last ``<ACT>`` (``p`` of the frame's event).
3. When the score *crosses* the threshold (≥ threshold on this frame, below it on the previous
   scored frame, or this is the first scored frame), the answerer answers from the buffer; the
   answer is a prediction at the frame's time and enters the buffer as an assistant turn
   (StreamBridge's MB ← R). While the score stays above the threshold no new answer is asked for.

The answerer is a plain Qwen2.5-VL / Qwen3-VL checkpoint (transformers' own class, as in the
decision-tree protocol) or a StreamPro checkpoint used as a plain answerer (its ``</Response>``
forced as the first answer token, so that it never declines). It runs ``generate`` on the
buffer rendered with its chat template: a system line, then user turns holding the time-tagged
frames and the question ("Question: …", after the frame of its turn), the earlier answers as
assistant turns, and a last user turn ending with "Answer the question based on the frames so
far, briefly.". The frames enter as pre-computed (possibly pooled) vision features
(``mm_encoder_outputs``), so a frame is encoded once.

**Round-decayed compression** (docs/engine.md, ``memory="round_decay"``, the same rule and the
engine's own pooling, ``_Turn.pool``): when the rendered buffer exceeds ``token_budget`` tokens, the
oldest frame's tokens are average-pooled 2× along the longer side of its token grid, oldest frame
first, until the buffer fits in 3/4 of the budget; the newest frame is never pooled; if every older
frame is down to one token and it still does not fit, the oldest frames are dropped (the question
and the answers stay). Pooling is kept: a pooled frame stays pooled.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from streampro.evaluation.protocols import (
    BaselineProcessor,
    QAOutput,
    SampleOutput,
    _event,
    _question_turns,
    _split_frame,
    load_baseline,
)
from streampro.modeling_streampro.time_streampro import time_tag, turn_index_for_time, turn_time

logger = logging.getLogger(__name__)

# Frames the activation model reads per score (= DEFAULT_WINDOW_FRAMES, the training window of trainer/activation.py).
ACTIVATION_WINDOW = 16
ACTIVATION_THRESHOLD = 0.5
# The answerer's memory budget in tokens: StreamBridge's MaxLen, whose value it does not give (docs/activation.md).
ACTIVATION_TOKEN_BUDGET = 16384

ANSWERER_SYSTEM = (
    "You are watching a video stream. The frames seen so far are shown in order, each after its time "
    "interval in seconds."
)
ANSWER_NOW = "Answer the question based on the frames so far, briefly."


@dataclass
class _Frame:
    """One buffered frame: its turn and the engine's pooled-turn record (features, deepstack, grid)."""

    index: int
    turn: object  # modeling_streampro._Turn (only its features, deepstack, grid and pool() are used)

    @property
    def tokens(self) -> int:
        return self.turn.num_image_tokens


class _ImageFrames:
    """``process_frames`` over a PIL image processor (what the engine's ``_encode_frames`` needs)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def process_frames(self, frames) -> dict:
        out = self.image_processor(images=list(frames), return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def encode_frame(model, image_processor, image) -> tuple:
    """(features, deepstack, merged grid) of one frame, with the engine's ``_encode_frames``."""
    from streampro.modeling_streampro.modeling_streampro import _encode_frames

    with torch.no_grad():
        return _encode_frames(model, _ImageFrames(image_processor), [image])[0]


def vision_inputs(frames: list[tuple], merge: int) -> dict:
    """``image_grid_thw`` + ``mm_encoder_outputs`` for pre-encoded frames ``(features, deepstack, grid)``."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    encoded = BaseModelOutputWithPooling(pooler_output=[f for f, _, _ in frames])
    if frames[0][1] is not None:
        encoded.deepstack_features = [[d[i] for _, d, _ in frames] for i in range(len(frames[0][1]))]
    grid = torch.tensor([[1, h * merge, w * merge] for _, _, (h, w) in frames], dtype=torch.long)
    return {"image_grid_thw": grid, "mm_encoder_outputs": {"image": encoded}}


# --------------------------------------------------------------------------------------------
# The answerer and its memory buffer
# --------------------------------------------------------------------------------------------


class RoundDecayAnswerer:
    """A plain Qwen-VL checkpoint answering from a memory buffer with round-decayed compression (module docstring)."""

    def __init__(self, model, processor: BaselineProcessor, *, fps: float = 1.0,
                 token_budget: int = ACTIVATION_TOKEN_BUDGET, max_new_tokens: int = 64, answer_prefix: str = ""):
        if token_budget < 1:
            raise ValueError(f"token_budget must be >= 1, got {token_budget}")
        self.model, self.processor = model, processor
        self.fps, self.token_budget, self.max_new_tokens = fps, token_budget, max_new_tokens
        self.answer_prefix = answer_prefix
        self.device = next(model.parameters()).device
        self.merge = model.config.vision_config.spatial_merge_size
        self.reset()

    def reset(self) -> None:
        self.frames: list[_Frame] = []
        self.texts: list[tuple[int, str, str]] = []  # (turn, role, text): user text after its frame, answers
        self.dropped_frames = 0
        self.num_compressions = 0

    # ---- the buffer ---------------------------------------------------------------------
    def add_frame(self, k: int, image) -> None:
        from streampro.modeling_streampro.modeling_streampro import _Turn

        features, deepstack, grid = encode_frame(self.model, self.processor.image_processor, image)
        self.frames.append(_Frame(k, _Turn(k, [], [], features, deepstack, grid, pinned=False)))
        self._maybe_compress()

    def add_text(self, k: int, role: str, text: str) -> None:
        """User text (the question, later user turns) or an answer (``role="assistant"``) on turn k."""
        self.texts.append((k, role, text))

    def _messages(self, instruction: str) -> list[dict]:
        messages = [{"role": "system", "content": ANSWERER_SYSTEM}]
        items = [(f.index, 0, ("frame", f.index)) for f in self.frames]
        items += [(k, 1 if role == "user" else 2, (role, text)) for k, role, text in self.texts]
        user: list[dict] = []
        for _, _, (kind, value) in sorted(items, key=lambda x: (x[0], x[1])):
            if kind == "frame":
                user += [{"type": "text", "text": time_tag(value, self.fps)}, {"type": "image"}]
            elif kind == "user":
                user.append({"type": "text", "text": value})
            else:  # an earlier answer closes the user turn before it
                if user:
                    messages.append({"role": "user", "content": user})
                    user = []
                messages.append({"role": "assistant", "content": value})
        messages.append({"role": "user", "content": user + [{"type": "text", "text": instruction}]})
        return messages

    def _render(self, instruction: str) -> str:
        tokenizer = self.processor.tokenizer
        text = tokenizer.apply_chat_template(self._messages(instruction), tokenize=False, add_generation_prompt=True)
        return text + self.answer_prefix

    def context_tokens(self, instruction: str = ANSWER_NOW) -> int:
        """Tokens of the rendered buffer: its text plus every frame's (pooled) image tokens."""
        text = self._render(instruction)
        n_text = len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]) - text.count("<|image_pad|>")
        return n_text + sum(f.tokens for f in self.frames)

    def _maybe_compress(self, instruction: str = ANSWER_NOW) -> None:
        """docs/engine.md's round-decay rule on the buffer (oldest frames pooled first, newest intact)."""
        total = self.context_tokens(instruction)
        if total <= self.token_budget:
            return
        self.num_compressions += 1
        target = int(self.token_budget * 0.75)
        changed = True
        while total > target and changed:
            changed = False
            for frame in self.frames[:-1]:
                before = frame.tokens
                if frame.turn.pool():
                    total += frame.tokens - before
                    changed = True
                    break
        while total > target and len(self.frames) > 1:
            self.frames.pop(0)
            self.dropped_frames += 1
            total = self.context_tokens(instruction)

    # ---- answers ------------------------------------------------------------------------
    @torch.no_grad()
    def answer(self, instruction: str = ANSWER_NOW) -> str:
        """Greedy answer after the buffer and ``instruction`` (the buffer is compressed first if needed)."""
        if not self.frames:
            raise ValueError("no frames in the buffer")
        self._maybe_compress(instruction)
        text = self._render(instruction)
        pieces = text.split("<|image_pad|>")
        if len(pieces) - 1 != len(self.frames):
            raise ValueError(f"the chat template rendered {len(pieces) - 1} image placeholders for "
                             f"{len(self.frames)} frames")
        expanded = pieces[0] + "".join("<|image_pad|>" * f.tokens + p for f, p in zip(self.frames, pieces[1:]))
        tok = self.processor.tokenizer
        enc = tok(expanded, add_special_tokens=False, return_tensors="pt")
        vision = vision_inputs([(f.turn.features, f.turn.deepstack, f.turn.grid) for f in self.frames], self.merge)
        eot = self.processor.end_of_turn_id
        pad = tok.pad_token_id
        seq = self.model.generate(
            input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device),
            mm_token_type_ids=(enc["input_ids"] == self.processor.image_token_id).int().to(self.device),
            image_grid_thw=vision["image_grid_thw"].to(self.device), mm_encoder_outputs=vision["mm_encoder_outputs"],
            max_new_tokens=self.max_new_tokens, do_sample=False, eos_token_id=eot,
            pad_token_id=eot if pad is None else pad,
        )
        return tok.decode(seq[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


# --------------------------------------------------------------------------------------------
# The activation model at inference
# --------------------------------------------------------------------------------------------


class ActivationScorer:
    """Scores frames with an activation model: the question + a sliding window of frames since the question."""

    def __init__(self, model, processor, *, fps: float = 1.0, window_frames: int = ACTIVATION_WINDOW):
        if window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {window_frames}")
        self.model, self.processor = model, processor
        self.fps, self.window_frames = fps, window_frames
        self.device = next(model.parameters()).device
        self.merge = model.config.vision_config.spatial_merge_size
        self.window: deque = deque(maxlen=window_frames)  # (turn, (features, deepstack, grid))

    def reset(self) -> None:
        self.window.clear()

    @torch.no_grad()
    def score(self, k: int, image, question: str) -> float:
        """Add turn k's frame to the window and return the score at its ``<ACT>``."""
        self.window.append((k, encode_frame(self.model, self.processor.image_processor, image)))
        frames = [v for _, v in self.window]
        ids = self.processor.window_ids(question, [t for t, _ in self.window],
                                        [h * w for _, _, (h, w) in frames], self.fps)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        vision = vision_inputs(frames, self.merge)
        scores = self.model.act_scores(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            mm_token_type_ids=(input_ids == self.processor.image_token_id).int(),
            image_grid_thw=vision["image_grid_thw"].to(self.device), mm_encoder_outputs=vision["mm_encoder_outputs"],
        )[0]
        return float(scores[-1])


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


class ActivationProtocol:
    """StreamBridge's protocol: the activation model decides when, the answerer answers (module docstring)."""

    name = "activation"

    def __init__(self, scorer: ActivationScorer, answerer: RoundDecayAnswerer, *,
                 threshold: float | None = None):
        self.scorer, self.answerer = scorer, answerer
        self.fps = scorer.fps
        self.threshold = ACTIVATION_THRESHOLD if threshold is None else float(threshold)
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")

    def run(self, frames, question: str, question_time: float, user_turns: list[dict] | None = None) -> SampleOutput:
        """Stream ``frames``; ``user_turns`` (``[{"time", "content"}]``) enter the answerer's buffer at their turns."""
        out = SampleOutput()
        q_turn = turn_index_for_time(question_time, self.fps)
        later = sorted(((turn_index_for_time(float(u["time"]), self.fps), str(u["content"])) for u in user_turns or []),
                       key=lambda x: x[0])
        self.scorer.reset()
        self.answerer.reset()
        above = False
        k = -1
        for k, frame in enumerate(frames):
            image = _split_frame(frame, k, self.fps)
            t = turn_time(k, self.fps)
            self.answerer.add_frame(k, image)
            if k == q_turn:
                self.answerer.add_text(k, "user", f"Question: {question}")
            for turn, text in later:
                if turn == k:
                    self.answerer.add_text(k, "user", text)
            if k < q_turn:
                out.events.append(_event(t, "before_question", None))
                continue
            p = self.scorer.score(k, image, question)
            if p < self.threshold:
                above = False
                out.events.append(_event(t, "wait", p))
                continue
            if above:  # still above the threshold since the last crossing: no new answer
                out.events.append(_event(t, "active", p))
                continue
            above = True
            text = self.answerer.answer()
            if not text:
                out.events.append(_event(t, "empty_answer", p))
                continue
            self.answerer.add_text(k, "assistant", text)
            out.events.append(_event(t, "response", p))
            out.predictions.append({"time": t, "text": text})
        if k < 0:
            raise ValueError("no frames: the stream is empty")
        if q_turn > k:
            raise ValueError(f"question time {question_time} s is beyond the stream ({k + 1} frames, "
                             f"{turn_time(k, self.fps):g} s at {self.fps} fps)")
        return out

    def answer_at(self, frames, questions: list[tuple[float, str]]) -> QAOutput:
        """Real-time questions: each answered at its turn from the buffer so far (no activation: the answer is due)."""
        at = _question_turns(questions, self.fps)
        last = max(at)
        self.answerer.reset()
        out = QAOutput(answers=[None] * len(questions))
        k = -1
        for k, frame in enumerate(frames):
            out.frames += 1
            self.answerer.add_frame(k, _split_frame(frame, k, self.fps))
            for i in at.get(k, []):
                text = self.answerer.answer(questions[i][1])
                out.answers[i] = {"time": turn_time(k, self.fps), "text": text, "p": None}
            if k == last:
                break
        if k < 0:
            raise ValueError("no frames: the stream is empty")
        return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_activation(model_dir: str | Path, device, dtype=None):
    """(activation model, processor) of a ``streampro train activation`` checkpoint, strictly."""
    from streampro.modeling_streampro.modeling_activation import StreamProActivationModel
    from streampro.modeling_streampro.processing_activation import StreamProActivationProcessor

    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"--activation-model {model_dir} is not a model directory (no config.json)")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type != "streampro_activation":
        raise ValueError(f"--activation-model {model_dir} has model_type {model_type!r}, not 'streampro_activation'; "
                         "train one with `streampro train activation --config RECIPE.yaml`")
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    model = StreamProActivationModel.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    return model, StreamProActivationProcessor.from_pretrained(model_dir, trust_remote_code=True)


def load_answerer(model_dir: str | Path, device, dtype=None) -> tuple:
    """(model, BaselineProcessor, answer prefix) of a plain Qwen-VL checkpoint or a StreamPro checkpoint."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"--model {model_dir} is not a model directory (no config.json)")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type == "streampro":
        from streampro.loading import load_model_and_processor

        if dtype is None:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        model, processor = load_model_and_processor(model_dir, device=str(device), dtype=dtype)
        if processor.tokenizer.chat_template is None:  # saved with the processor rather than the tokenizer
            processor.tokenizer.chat_template = processor.chat_template
        # A StreamPro model answers after its </Response> token: forced, so that it never declines.
        return model, BaselineProcessor(processor.tokenizer, processor.image_processor), "</Response>"
    if model_type not in ("qwen2_5_vl", "qwen3_vl"):
        raise ValueError(f"--model {model_dir} has model_type {model_type!r}; the answerer of the activation and "
                         "decision-tree protocols is a plain Qwen2.5-VL / Qwen3-VL checkpoint or a StreamPro checkpoint")
    model, processor = load_baseline(model_dir, device, dtype)
    return model, processor, ""


def build_activation_protocol(model_dir, activation_model, *, device, fps: float, window_frames: int,
                              max_new_tokens: int, threshold: float | None, token_budget: int | None):
    """The activation protocol from an answerer checkpoint and an activation checkpoint."""
    if activation_model is None:
        raise ValueError("--protocol activation needs --activation-model DIR (a `streampro train activation` checkpoint)")
    if model_dir is None:
        from streampro.loading import default_model_dir

        model_dir = default_model_dir()  # the embedded StreamPro model, used as a plain answerer
    act_model, act_processor = load_activation(activation_model, device)
    model, processor, prefix = load_answerer(model_dir, device)
    answerer = RoundDecayAnswerer(model, processor, fps=fps, max_new_tokens=max_new_tokens, answer_prefix=prefix,
                                  token_budget=ACTIVATION_TOKEN_BUDGET if token_budget is None else token_budget)
    scorer = ActivationScorer(act_model, act_processor, fps=fps, window_frames=window_frames)
    return ActivationProtocol(scorer, answerer, threshold=threshold)
