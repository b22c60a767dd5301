"""StreamPro model: a Qwen2.5-VL / Qwen3-VL backbone that watches a stream and decides when to speak.

Self-contained Hub remote code: imports only torch, transformers and its sibling files.

``StreamProForConditionalGeneration`` holds the backbone's own ``*Model`` (vision tower +
language model) under ``model`` and an ``lm_head``, so its weight names are exactly those of
transformers' ``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration``
(a StreamPro checkpoint is also a valid base checkpoint). Loading is strict: a missing or
mismatched weight raises instead of leaving a random initialisation behind.

Streaming (:meth:`StreamProForConditionalGeneration.generate_stream`, :class:`StreamSession`):
one turn per frame, each turn prefilled on top of the KV cache with explicit M-RoPE positions;
the first assistant token is the decision; after ``</Response>`` the answer is decoded and stays
in the context. A three-state checkpoint (``config.standby_token_id`` set) also decides
``</Standby>``: the event is under way but not over; the turn closes without output like a silent
one (docs/engine.md, "Three states (Streamo)"). Memory policies:

* ``"window"`` (default): the context holds the system prompt, every turn in which a question
  was asked (pinned), and at most ``window_turns`` other turns. When a new turn would exceed
  that, the oldest ``evict_turns`` unpinned turns are dropped and the kept turns are prefilled
  again from cached vision features (no vision re-encoding). The state after a slide is
  therefore *exactly* a fresh run over the kept turns; between slides the window grows by one
  turn per frame. Cost: one turn per frame plus, every ``evict_turns`` frames, one prefill of
  the kept window.
* ``"sink_window"`` (StreamingVLM-style, for unbounded streams): the turns of ``"window"``, but an
  eviction drops the evicted turns' KV entries in place and re-bases the kept entries' M-RoPE
  positions by rotating their cached keys (``_rebase_keys``), with no re-prefill. An approximation:
  kept entries in layers >= 1 were computed with the evicted turns in context (docs/engine.md).
* ``"round_decay"`` (StreamBridge, docs/method.md §7): no turn is dropped while compression can help.
  When the context exceeds ``token_budget`` tokens, adjacent frame tokens of the oldest turns are
  average-pooled (2x along the longer side of the token grid), oldest turn first, round by round,
  until the context fits in 3/4 of the budget (the slack makes re-prefills periodic instead of
  per-frame); the newest frame is never pooled. If every older frame is down to one token and
  the context still does not fit, the oldest unpinned turns are dropped. The kept context is
  then prefilled again, with positions recomputed for the pooled grids.

Batched streams (:class:`StreamSessions`, ``generate_streams``): B sessions whose prefills and
answer-decoding steps run in one padded forward per round, with the events of B single sessions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast

from .configuration_streampro import StreamProConfig
from .processing_streampro import (
    RESPONSE_TOKEN,
    SILENCE_TOKEN,
    StreamProProcessor,
    turn_index_for_time,
    turn_time,
)


def check_loading_info(model, info: dict, args: tuple, kwargs: dict, *, fix: str, tied: set = frozenset()) -> None:
    """Raise when ``from_pretrained`` left a weight missing (beyond ``tied``), unexpected or mismatched.

    transformers only logs these and leaves missing weights randomly initialised; ``fix`` ends the message.
    """
    problems = {
        "missing": sorted(set(info.get("missing_keys", [])) - tied),
        "unexpected": sorted(info.get("unexpected_keys", [])),
        "mismatched": [str(m) for m in info.get("mismatched_keys", [])],
    }
    if any(problems.values()):
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        details = "; ".join(f"{k}: {v[:5]}{' ...' if len(v) > 5 else ''}" for k, v in problems.items() if v)
        raise ValueError(f"checkpoint {source} does not match {type(model).__name__} ({details}). {fix}")


def _backbone_classes(backbone: str):
    """(backbone ``*Model`` class, backbone ``*PreTrainedModel`` class, backbone LM class)."""
    if backbone == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as m

        return m.Qwen2_5_VLModel, m.Qwen2_5_VLPreTrainedModel, m.Qwen2_5_VLForConditionalGeneration
    if backbone == "qwen3_vl":
        from transformers.models.qwen3_vl import modeling_qwen3_vl as m

        return m.Qwen3VLModel, m.Qwen3VLPreTrainedModel, m.Qwen3VLForConditionalGeneration
    raise ValueError(f"unsupported backbone {backbone!r}")


class StreamProPreTrainedModel(PreTrainedModel):
    config_class = StreamProConfig
    config: StreamProConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "Qwen2_5_VLDecoderLayer",
        "Qwen2_5_VLVisionBlock",
        "Qwen3VLTextDecoderLayer",
        "Qwen3VLVisionBlock",
    ]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        # The backbone's own initialisation (vision rotary buffers, patch merger, ...).
        _backbone_classes(self.config.backbone)[1]._init_weights(self, module)


class StreamProForConditionalGeneration(StreamProPreTrainedModel, GenerationMixin):
    """Qwen-VL backbone + LM head, with strict loading and the streaming decision loop."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    accepts_loss_kwargs = False

    def __init__(self, config: StreamProConfig):
        super().__init__(config)
        backbone_model_cls = _backbone_classes(config.backbone)[0]
        self.model = backbone_model_cls(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_image_features(self, pixel_values, image_grid_thw=None, **kwargs):
        return self.model.get_image_features(pixel_values, image_grid_thw, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        # Same computation as the backbone's *ForConditionalGeneration.forward.
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )
        hidden_states = outputs[0]
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        """M-RoPE positions for plain ``generate()``: text positions stacked on the 3-D vision positions.

        Adapted from ``Qwen2_5_VLForConditionalGeneration._prepare_position_ids_for_generation``
        (transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py; Qwen3-VL's is the same). That method
        calls ``super()`` and so cannot be borrowed by another class: it is copied here, with
        ``GenerationMixin``'s text positions as its base. Returns (4, B, L) on the first call,
        (1, B, L) + rope deltas when continuing from a cache without new vision tokens.
        """
        text_positions = super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)  # (B, L)
        past_length = 0
        if (cache := model_kwargs.get("past_key_values")) is not None:
            past_length = cache.get_seq_length()
        mm_token_type_ids = model_kwargs.get("mm_token_type_ids")
        has_new_vision_tokens = mm_token_type_ids is not None and bool(mm_token_type_ids[:, past_length:].any())
        if past_length != 0 and self.model.rope_deltas is not None and not has_new_vision_tokens:
            return text_positions[None, ...] + self.model.rope_deltas
        if "input_ids" in model_kwargs and model_kwargs["input_ids"].shape[1] > 0:
            inputs_tensor = model_kwargs["input_ids"]
        is_input_ids = inputs_tensor.ndim == 2 and inputs_tensor.dtype in (torch.int, torch.long)
        has_grids = model_kwargs.get("image_grid_thw") is not None or model_kwargs.get("video_grid_thw") is not None
        if is_input_ids and mm_token_type_ids is not None and has_grids:
            rope_kwargs = {k: v for k, v in model_kwargs.items() if k != "input_ids"}
            vision_positions, rope_deltas = self.model.get_rope_index(inputs_tensor, **rope_kwargs)  # (3, B, L)
            self.model.rope_deltas = rope_deltas
        else:
            vision_positions = text_positions.unsqueeze(0).expand(3, -1, -1)
            self.model.rope_deltas = torch.zeros(inputs_tensor.shape[0], 1, dtype=torch.long, device=inputs_tensor.device)
        return torch.cat([text_positions[None, ...], vision_positions], dim=0)

    # ---- loading / saving -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Strict ``from_pretrained``: a missing, unexpected or mismatched weight is an error.

        transformers only logs missing weights and leaves them randomly initialised; a streaming
        model that silently lost its vision tower would still produce plausible-looking output.
        """
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        tied = set(model._tied_weights_keys or {}) if model.config.tie_word_embeddings else set()
        check_loading_info(model, info, args, kwargs, tied=tied,
                           fix="Convert base Qwen-VL checkpoints with `streampro convert-backbone SRC --out DST`.")
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights plus remote code, with ``auto_map`` for every Auto class StreamPro supports."""
        self.config.auto_map = dict(AUTO_MAP_MODEL)
        return super().save_pretrained(save_directory, *args, **kwargs)

    # ---- streaming ----------------------------------------------------------------------
    def stream_session(
        self,
        processor: StreamProProcessor,
        options: SessionOptions | None = None,
        *,
        generator: torch.Generator | None = None,
        **option_fields,
    ) -> StreamSession:
        """A live session: call ``ask(text)`` when a question arrives and ``step(frame)`` per frame.

        Options: a :class:`SessionOptions`, or its fields as keywords.
        """
        return StreamSession(self, processor, options, generator=generator, **option_fields)

    def stream_sessions(
        self,
        processor: StreamProProcessor,
        n: int,
        options: SessionOptions | None = None,
        *,
        generators: list[torch.Generator | None] | None = None,
        **option_fields,
    ) -> StreamSessions:
        """``n`` live sessions stepped together, one batched forward per round (:class:`StreamSessions`)."""
        return StreamSessions(self, processor, n, options, generators=generators, **option_fields)

    @torch.no_grad()
    def generate_stream(
        self,
        frames: Iterable,
        question: str | list[tuple[float, str]] | None,
        *,
        processor: StreamProProcessor,
        question_time: float = 0.0,
        generator: torch.Generator | None = None,
        **options,
    ) -> Iterator[StreamEvent]:
        """Stream ``frames`` and yield one :class:`StreamEvent` per frame.

        Args:
            frames: PIL images / HxWx3 uint8 arrays, or ``(time, image)`` pairs from
                ``streampro.video`` (times must follow the turn convention at ``fps``).
            question: the question text (asked at ``question_time`` seconds), or a list of
                ``(time, text)`` for several questions arriving mid-stream.
            processor: the checkpoint's :class:`StreamProProcessor`.
            generator: the random generator for sampling (``do_sample=True``).
            **options: the fields of :class:`SessionOptions` (fps, window_turns, evict_turns, memory,
                token_budget, max_new_tokens, response_threshold, do_sample, temperature, top_p,
                system_prompt, constrain_decision).
        """
        questions = _normalise_questions(question, question_time)
        session = StreamSession(self, processor, generator=generator, **options)
        yield from drive_stream(session, frames, questions)

    @torch.no_grad()
    def generate_streams(
        self,
        streams: list[Iterable],
        questions: list[str | list[tuple[float, str]] | None],
        *,
        processor: StreamProProcessor,
        question_times: list[float] | None = None,
        generators: list[torch.Generator | None] | None = None,
        **options,
    ) -> list[list[StreamEvent]]:
        """``generate_stream`` over several streams at once (:class:`StreamSessions`): one list of events per stream.

        ``questions[i]`` (asked at ``question_times[i]``, default 0) is stream i's question or list of
        ``(time, text)``; ``generators[i]`` its sampling generator. The events equal those of
        ``generate_stream`` on each stream alone (greedy: decisions and texts exactly, ``p_response``
        to float32 rounding). A stream that runs out of frames is closed and leaves the batch.
        """
        n = len(streams)
        if len(questions) != n or (question_times is not None and len(question_times) != n):
            raise ValueError(f"{n} streams but {len(questions)} questions / question_times: give one per stream")
        times = question_times or [0.0] * n
        sessions = StreamSessions(self, processor, n, generators=generators, **options)
        fps = sessions.options.fps
        pending = [sorted(_normalise_questions(q, t)) for q, t in zip(questions, times)]
        iterators = [iter(frames) for frames in streams]
        events: list[list[StreamEvent]] = [[] for _ in range(n)]
        open_ = set(range(n))
        k = 0
        while open_:
            batch: list = [None] * n
            for i in sorted(open_):
                frame = next(iterators[i], _END)
                if frame is _END:
                    sessions.close(i)
                    open_.discard(i)
                    continue
                while pending[i] and turn_index_for_time(pending[i][0][0], fps) == k:
                    sessions.ask(i, pending[i].pop(0)[1])
                batch[i] = frame
            if open_:
                for i, ev in enumerate(sessions.step(batch)):
                    if ev is not None:
                        events[i].append(ev)
            k += 1
        for i in range(n):
            if not events[i]:
                raise ValueError(f"stream {i}: no frames: the stream is empty")
            if pending[i]:
                raise ValueError(
                    f"stream {i}: question time {pending[i][0][0]} s is beyond the stream ({len(events[i])} frames, "
                    f"{turn_time(len(events[i]) - 1, fps):g} s at {fps} fps)"
                )
        return events


_END = object()  # end-of-stream marker for generate_streams


AUTO_MAP_MODEL = {
    "AutoConfig": "configuration_streampro.StreamProConfig",
    "AutoModel": "modeling_streampro.StreamProForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_streampro.StreamProForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_streampro.StreamProForConditionalGeneration",
    "AutoProcessor": "processing_streampro.StreamProProcessor",
}


def _register_weight_conversion() -> None:
    """Let StreamPro load checkpoints with the original Qwen key names (``visual.*``, ``model.layers.*``).

    transformers converts those names per class; a custom class is skipped unless registered.
    """
    from transformers import conversion_mapping as cm

    name = StreamProForConditionalGeneration.__name__
    if name not in cm.USER_REGISTERED_MAPPINGS:
        base = cm.get_checkpoint_conversion_mapping("Qwen2VLForConditionalGeneration") or []
        cm.register_checkpoint_conversion_mapping(name, base, overwrite=True)


_register_weight_conversion()
# save_pretrained copies this file and its siblings next to the weights (Hub remote code).
StreamProForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")


def _normalise_questions(question, question_time: float) -> list[tuple[float, str]]:
    if question is None:
        return []
    if isinstance(question, str):
        items = [(question_time, question)]
    else:
        items = [(float(t), str(q)) for t, q in question]
    for t, q in items:
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"question time must be a finite number >= 0, got {t!r} for {q!r}")
        if not q.strip():
            raise ValueError("question text is empty")
    return items


def drive_stream(session, frames: Iterable, questions: list[tuple[float, str]]) -> Iterator[StreamEvent]:
    """Step ``session`` over ``frames``, asking each ``(time, text)`` of ``questions`` on its turn; one event per frame.

    Any session with ``fps``, ``ask`` and ``step`` is driven the same way (``generate_stream``, and
    the vLLM engine's sessions in ``streampro.serving``).
    """
    fps = session.fps
    pending = sorted(questions)
    known_length = len(frames) if hasattr(frames, "__len__") else None
    if known_length == 0:
        raise ValueError("no frames: the stream is empty")
    if known_length is not None and pending:
        last_turn = turn_index_for_time(pending[-1][0], fps)
        if last_turn >= known_length:
            raise ValueError(
                f"question time {pending[-1][0]} s falls on turn {last_turn}, beyond the stream of "
                f"{known_length} frames ({turn_time(known_length - 1, fps) if known_length else 0:g} s at {fps} fps)"
            )
    k = -1
    for k, frame in enumerate(frames):
        while pending and turn_index_for_time(pending[0][0], fps) == k:
            session.ask(pending.pop(0)[1])
        yield session.step(frame)
    if k < 0:
        raise ValueError("no frames: the stream is empty")
    if pending:
        raise ValueError(
            f"question time {pending[0][0]} s is beyond the stream ({k + 1} frames, "
            f"{turn_time(k, fps):g} s at {fps} fps)"
        )


# ======================================================================================
# Streaming engine
# ======================================================================================


def threshold_decision(scores, p_response: float, threshold: float) -> int:
    """The decision under a response threshold, as an index into the decision tokens (silence, response
    [, standby]): response when ``p_response`` reaches ``threshold``, else the more probable quiet
    decision (silence on a tie). ``scores``: those tokens' logits or probabilities, in that order."""
    if p_response >= threshold:
        return 1
    return 2 if len(scores) == 3 and scores[2] > scores[0] else 0


@dataclass
class StreamEvent:
    """What happened on one frame (one turn)."""

    time: float  # the turn's time, (k + 1) / fps
    frame_index: int  # k
    decision: str  # "silence" | "response" | "standby" (three-state only) | "invalid" (unconstrained sampling only)
    text: str  # the answer ("" when silent or standby)
    # P(</Response>) renormalised over the checkpoint's decision tokens (two or three); None before the question
    p_response: float | None
    question: str | None = None  # a question asked on this turn
    generated_ids: list[int] = field(default_factory=list)  # tokens the model produced on this turn
    context_tokens: int = 0  # tokens in the KV cache after the turn

    def to_dict(self) -> dict:
        return {
            "time": self.time,
            "frame_index": self.frame_index,
            "decision": self.decision,
            "text": self.text,
            "p_response": self.p_response,
            "question": self.question,
            "context_tokens": self.context_tokens,
        }


@dataclass
class _Turn:
    """A completed (or in-progress) turn as it sits in the context."""

    index: int
    head_ids: list[int]  # "<|im_start|>user\n<tag>" + "<|vision_start|>"
    tail_ids: list[int]  # "<|vision_end|>question<|im_end|>\n<|im_start|>assistant\n"
    features: torch.Tensor  # (h*w, D) merged vision features, row-major over the (h, w) grid
    deepstack: list[torch.Tensor] | None  # Qwen3-VL: per deepstack layer, (h*w, D)
    grid: tuple[int, int]  # merged token grid (h, w)
    pinned: bool
    assistant_ids: list[int] = field(default_factory=list)  # decision + answer + closing, once known
    position: int = 0  # M-RoPE position of the turn's first token in the current context

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def num_tokens(self) -> int:
        return len(self.head_ids) + self.num_image_tokens + len(self.tail_ids) + len(self.assistant_ids)

    def span(self) -> int:
        """Positions the turn takes: one per text token, max(h, w) for the frame (Qwen-VL's rule)."""
        return len(self.head_ids) + max(self.grid) + len(self.tail_ids) + len(self.assistant_ids)

    def pool(self) -> bool:
        """Average-pool adjacent frame tokens 2x along the longer grid side; False when already 1 token."""
        h, w = self.grid
        if h * w == 1:
            return False
        along_w = w >= h

        def pool_one(x: torch.Tensor) -> torch.Tensor:
            grid = x.reshape(h, w, -1).permute(2, 0, 1)[None]  # (1, D, h, w)
            kernel = (1, 2) if along_w else (2, 1)
            pooled = F.avg_pool2d(grid.float(), kernel, ceil_mode=True).to(x.dtype)
            return pooled[0].permute(1, 2, 0).reshape(-1, x.shape[-1])

        self.features = pool_one(self.features)
        if self.deepstack is not None:
            self.deepstack = [pool_one(d) for d in self.deepstack]
        self.grid = (h, (w + 1) // 2) if along_w else ((h + 1) // 2, w)
        return True


@dataclass
class SessionOptions:
    """The options of a streaming session; ``generate_stream``, ``stream_session(s)`` take its fields as keywords.

    ``memory`` is ``"window"``, ``"sink_window"`` or ``"round_decay"`` (module docstring);
    ``evict_turns`` defaults to ``window_turns // 4``. ``response_threshold``: respond when
    ``p_response`` ≥ it instead of the arg-max decision. ``do_sample`` / ``temperature`` /
    ``top_p``: sampling for the decision and the answer. ``constrain_decision=False`` samples the
    first assistant token from the full vocabulary (GRPO rollouts).
    """

    fps: float = 1.0
    window_turns: int = 200
    evict_turns: int | None = None
    max_new_tokens: int = 64
    response_threshold: float | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    memory: str = "window"
    token_budget: int | None = None
    system_prompt: str | None = None
    constrain_decision: bool = True

    def __post_init__(self):
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.window_turns < 1:
            raise ValueError(f"window_turns must be >= 1, got {self.window_turns}")
        if self.evict_turns is None:
            self.evict_turns = max(1, self.window_turns // 4)
        if not 1 <= self.evict_turns <= self.window_turns:
            raise ValueError(f"evict_turns must be in [1, window_turns={self.window_turns}], got {self.evict_turns}")
        if self.memory not in MEMORY_POLICIES:
            raise ValueError(f"memory must be one of {', '.join(map(repr, MEMORY_POLICIES))}, got {self.memory!r}")
        if self.memory == "round_decay" and (self.token_budget is None or self.token_budget <= 0):
            raise ValueError("memory='round_decay' needs a positive token_budget")
        if self.response_threshold is not None and not 0.0 <= self.response_threshold <= 1.0:
            raise ValueError(f"response_threshold must be in [0, 1], got {self.response_threshold}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")


MEMORY_POLICIES = ("window", "sink_window", "round_decay")


def _options(options: SessionOptions | None, fields: dict) -> SessionOptions:
    if options is None:
        return SessionOptions(**fields)
    if fields:
        raise TypeError(f"pass either a SessionOptions or its fields as keywords, not both (got {sorted(fields)})")
    return options


# What a session asks of the cache that holds its context. A session's step is a generator of
# these requests; StreamSession runs them on its own DynamicCache, StreamSessions runs the
# prefills of all its streams in one batched forward.
@dataclass
class _Prefill:
    """Append tokens to the context and return the logits of the last one, (V,) float32."""

    ids: list[int]
    positions: torch.Tensor  # (3, L) M-RoPE positions
    images: list  # the _Turns whose frames these tokens hold, in order


@dataclass
class _Evict:
    """Keep only the entries ``keep`` (indices into the stream's context, ascending); re-base their positions."""

    keep: torch.Tensor  # (K,)
    shift: torch.Tensor  # (K,) position change of each kept entry (0 for the sink, < 0 after dropped turns)


_RESET = "reset"  # empty the context


def _encode_frames(model, processor, images: list) -> list[tuple]:
    """Vision features of ``images`` in one vision forward: per image (features, deepstack, merged grid)."""
    vision = processor.process_frames(images)
    device = next(model.parameters()).device
    pixel_values = vision["pixel_values"].to(device, model.dtype)
    grid_thw = vision["image_grid_thw"].to(device)
    out = model.model.get_image_features(pixel_values, grid_thw, return_dict=True)
    merge = model.model.config.vision_config.spatial_merge_size
    grids = [(h // merge, w // merge) for _, h, w in grid_thw.tolist()]
    sizes = [h * w for h, w in grids]

    def per_image(x) -> list[torch.Tensor]:
        return list(x) if isinstance(x, (list, tuple)) else list(x.split(sizes))

    features = per_image(out.pooler_output)
    deepstack = getattr(out, "deepstack_features", None)
    layers = [per_image(d) for d in deepstack] if deepstack is not None else None
    return [(features[i], None if layers is None else [layer[i] for layer in layers], grids[i]) for i in range(len(images))]


def _run_model(model, input_ids, position_ids, images: list, cache, attention_mask=None) -> torch.Tensor:
    """One forward on ``cache``: (B, L) ids, (3, B, L) positions; logits of the last column, (B, V) float32."""
    kwargs = {}
    if images:
        enc = BaseModelOutputWithPooling(pooler_output=[t.features for t in images])
        if images[0].deepstack is not None:
            layers = len(images[0].deepstack)
            enc.deepstack_features = [[t.deepstack[i] for t in images] for i in range(layers)]
        kwargs["mm_encoder_outputs"] = {"image": enc}
    out = model(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=attention_mask,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
        **kwargs,
    )
    return out.logits[:, -1].float()


def _rope_inv_freq(model) -> torch.Tensor:
    """The text model's rotary inverse frequencies, (head_dim / 2,); sink_window needs plain (default) RoPE."""
    rope_type = model.config.get_text_config().rope_parameters.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(
            f"memory='sink_window' re-bases cached keys by rotating them, which needs rope_type 'default' "
            f"(angle linear in the position); this checkpoint uses {rope_type!r}: use memory='window'"
        )
    return model.model.language_model.rotary_emb.inv_freq


def _rebase_keys(keys: torch.Tensor, shift: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Keys cached at M-RoPE position (t, h, w) → the keys at (t + d, h + d, w + d), d = ``shift``; (..., n, D).

    Qwen-VL's M-RoPE rotates frequency pair j by angle pos_a(j) · inv_freq[j], where the axis a(j)
    (time, height or width) comes from ``mrope_section`` — in blocks for Qwen2.5-VL, interleaved
    for Qwen3-VL. When all three axes move by the same d, every pair's angle moves by d · inv_freq[j]
    whatever its axis, so the re-based key is the cached key rotated by d with plain RoPE
    (rotate_half layout, the same cos/sin for both halves); the attention scaling (1 for default
    RoPE) is already in the cached key. Computed in float32, rounded once to the cache dtype.
    """
    angle = shift.to(device=keys.device, dtype=torch.float32)[:, None] * inv_freq.to(keys.device, torch.float32)[None]
    angle = torch.cat([angle, angle], dim=-1)  # (n, D)
    k = keys.float()
    half = k.shape[-1] // 2
    rotated = torch.cat([-k[..., half:], k[..., :half]], dim=-1)
    return (k * angle.cos() + rotated * angle.sin()).to(keys.dtype)


def _evict_entries(layer, row: int | None, keep_cols: torch.Tensor, shift: torch.Tensor, inv_freq: torch.Tensor) -> None:
    """Sink-window eviction on one cache layer: keep ``keep_cols`` and re-base their keys by ``shift``.

    ``row`` None: a single stream, the entries ``keep_cols`` are gathered (the dropped ones leave the
    cache). Otherwise a row of a batch cache: the kept entries are re-based in place (the batch's
    mask drops the others).
    """
    moved = shift != 0
    if row is None:
        layer.keys = layer.keys[:, :, keep_cols]
        layer.values = layer.values[:, :, keep_cols]
        if moved.any():
            layer.keys[:, :, moved] = _rebase_keys(layer.keys[:, :, moved], shift[moved], inv_freq)
        return
    if moved.any():
        where = keep_cols[moved].to(layer.keys.device)
        keys = layer.keys[row]  # (H, T, D), a view: writing to it writes the cache
        keys[:, where] = _rebase_keys(keys[:, where], shift[moved], inv_freq)


class StreamSession:
    """The streaming decision loop over one stream, with KV-cache reuse and bounded memory.

    Use :meth:`ask` when a question arrives and :meth:`step` for every frame; each step
    returns a :class:`StreamEvent`. ``generate_stream`` is a thin wrapper around this.
    Internally a step is a generator of cache requests (``_Prefill``, ``_Evict``, reset), run
    here on the session's own ``DynamicCache`` and by :class:`StreamSessions` batched over streams.
    """

    def __init__(
        self,
        model: StreamProForConditionalGeneration,
        processor: StreamProProcessor,
        options: SessionOptions | None = None,
        *,
        generator: torch.Generator | None = None,
        _batched: bool = False,
        **option_fields,
    ):
        options = _options(options, option_fields)
        cfg = model.config
        if cfg.silence_token_id is None or cfg.response_token_id is None:
            raise ValueError(
                "this checkpoint has no decision tokens (config.silence_token_id / response_token_id unset); "
                "convert it with `streampro convert-backbone SRC --out DST`"
            )
        if (processor.silence_token_id, processor.response_token_id) != (cfg.silence_token_id, cfg.response_token_id):
            raise ValueError(
                f"processor and model disagree on the decision token ids: processor "
                f"{(processor.silence_token_id, processor.response_token_id)} vs model "
                f"{(cfg.silence_token_id, cfg.response_token_id)}; load both from the same checkpoint"
            )
        standby_id = getattr(cfg, "standby_token_id", None)
        if getattr(processor, "standby_token_id", None) != standby_id:
            raise ValueError(
                f"processor and model disagree on the standby token: the processor's tokenizer has </Standby> = "
                f"{getattr(processor, 'standby_token_id', None)} but the model's config.standby_token_id is "
                f"{standby_id} (a three-state checkpoint needs both, a two-state one neither); load both from "
                "the same checkpoint"
            )
        self.model, self.processor, self.options = model, processor, options
        self.fps, self.window_turns, self.evict_turns = options.fps, options.window_turns, options.evict_turns
        self.max_new_tokens, self.response_threshold = options.max_new_tokens, options.response_threshold
        self.do_sample, self.temperature, self.top_p = options.do_sample, options.temperature, options.top_p
        self.memory, self.token_budget = options.memory, options.token_budget
        self.constrain_decision, self.generator = options.constrain_decision, generator
        self.inv_freq = _rope_inv_freq(model) if self.memory == "sink_window" else None
        # (silence, response) or (silence, response, standby): index 1 is always response.
        ids = [cfg.silence_token_id, cfg.response_token_id] + ([standby_id] if standby_id is not None else [])
        self.decision_ids = torch.tensor(ids)
        self.device = next(model.parameters()).device
        self.system_ids = processor.encode_system(options.system_prompt)["input_ids"].tolist()
        self._check_context()
        self.turns: list[_Turn] = []
        self.pending_ids: list[int] = []  # tokens decided but not yet in the cache (fed with the next chunk)
        self._question: str | None = None
        self.asked = False
        self.frame_size: tuple[int, int] | None = None
        self.num_refreshes = 0  # how many times the kept context was prefilled again
        self.num_evictions = 0  # sink_window: how many times turns were dropped in place
        self.dropped_turns = 0  # turns evicted so far (turn indices keep counting)
        self.cache = None  # the session's DynamicCache; StreamSessions sets a view of its batch row instead
        if not _batched:
            self._run(self._prefill_context())

    def _check_context(self) -> None:
        """Warn at session start when a full context could exceed the model's context length.

        The bound: the system prompt plus, per kept turn, a frame at the processor's largest size
        (``max_pixels`` / (patch · merge)² tokens) and the turn's text (answers not counted). With
        ``round_decay`` the kept context is ``token_budget`` plus one turn.
        """
        ip = self.processor.image_processor
        frame_tokens = ip.size["longest_edge"] // (ip.patch_size * ip.merge_size) ** 2
        text_tokens = len(self.processor.encode_text(self.processor.user_text(99_999, self.fps, 0)))
        turn_tokens = frame_tokens + text_tokens + 2 + len(self.processor.newline_ids)  # + decision, <|im_end|>
        if self.memory == "round_decay":
            needed = self.token_budget + turn_tokens
        else:
            needed = len(self.system_ids) + self.window_turns * turn_tokens
        context = self.model.config.get_text_config().max_position_embeddings
        if needed <= context:
            return
        fit = max(1, (context - len(self.system_ids)) // turn_tokens)
        warnings.warn(
            f"a full stream context needs about {needed:,} tokens ({frame_tokens} per frame at up to "
            f"{ip.size['longest_edge']:,} pixels + {turn_tokens - frame_tokens} text tokens per turn, "
            f"window_turns={self.window_turns}) but the model's context is {context:,} tokens "
            f"(text_config.max_position_embeddings): pass window_turns <= {fit}, smaller frames (the processor's "
            "max_pixels, `streampro convert-backbone --max-pixels`) or memory='round_decay' with a smaller token_budget",
            UserWarning,
            stacklevel=3,
        )

    # ---- public API ---------------------------------------------------------------------
    def ask(self, question: str) -> None:
        """A question arrives: it goes into the user turn of the next frame."""
        if not question or not question.strip():
            raise ValueError("question text is empty")
        self._question = question if self._question is None else f"{self._question} {question}"

    @property
    def context_tokens(self) -> int:
        return self.cache.get_seq_length()

    @property
    def next_turn_index(self) -> int:
        return len(self.turns) + self.dropped_turns

    @torch.no_grad()
    def step(self, frame) -> StreamEvent:
        """Ingest one frame (one turn) and return the decision for it."""
        k = self.next_turn_index
        image = self._check_frame(frame, k)
        return self._run(self._step(k, _encode_frames(self.model, self.processor, [image])[0]))

    def _step(self, k: int, vision: tuple):
        """The turn of frame k as a generator of cache requests; returns the event."""
        question, self._question = self._question, None
        if question is not None:
            self.asked = True
        turn = self._make_turn(k, vision, question)
        yield from self._maybe_make_room(turn)
        self.turns.append(turn)
        logits = yield from self._prefill(self.pending_ids, turn)
        self.pending_ids = []
        self.last_decision_logits = logits  # (V,) float32, kept for inspection and tests
        event = yield from self._decide_and_answer(turn, logits)
        event.question = question
        if self.memory == "round_decay":
            yield from self._maybe_compress()
        event.context_tokens = self.context_tokens + len(self.pending_ids)
        return event

    # ---- the session's own cache ---------------------------------------------------------
    def _run(self, requests):
        """Run a generator of cache requests on this stream's DynamicCache; return its result."""
        try:
            request = next(requests)
            while True:
                request = requests.send(self._execute(request))
        except StopIteration as stop:
            return stop.value

    def _execute(self, request):
        if request is _RESET:
            # A new object: a caller holding the old cache (the harness's rollback) keeps it intact.
            self.cache = DynamicCache(config=self.model.config.get_text_config())
            return None
        if isinstance(request, _Evict):
            keep = request.keep.to(self.device)
            for layer in self.cache.layers:
                _evict_entries(layer, None, keep, request.shift, self.inv_freq)
            return None
        input_ids = torch.tensor([request.ids], device=self.device)
        position_ids = request.positions[:, None, :].to(self.device)  # (3, 1, L)
        # On an empty cache attention is plain causal, so SDPA needs no explicit mask.
        return _run_model(self.model, input_ids, position_ids, request.images, self.cache)[0]

    # ---- frames and turns ---------------------------------------------------------------
    def _check_frame(self, frame, k: int):
        if isinstance(frame, tuple):
            if len(frame) != 2:
                raise ValueError(f"frame {k}: expected an image or a (time, image) pair, got a tuple of {len(frame)}")
            t, frame = frame
            expected = turn_time(k, self.fps)
            if abs(float(t) - expected) > 1e-3:
                raise ValueError(
                    f"frame {k} has time {t} s but turn {k} at {self.fps} fps is at {expected:g} s; "
                    "pass frames sampled at the session's fps (streampro.video.iter_video_frames(path, fps=...))"
                )
        size = _frame_size(frame, k)
        if self.frame_size is None:
            self.frame_size = size
        elif size != self.frame_size:
            raise ValueError(
                f"frame {k} is {size[1]}x{size[0]} but the stream started at {self.frame_size[1]}x{self.frame_size[0]}; "
                "all frames of a stream must have one size (resize them first)"
            )
        return frame

    def _make_turn(self, k: int, vision: tuple, question: str | None) -> _Turn:
        features, deepstack, grid = vision
        text = self.processor.user_text(k, self.fps, 1, question)
        head_text, tail_text = text.split("<|image_pad|>")
        head = self.processor.encode_text(head_text)
        tail = self.processor.encode_text(tail_text)
        return _Turn(k, head, tail, features, deepstack, grid, pinned=question is not None)

    # ---- positions and prefill ------------------------------------------------------------
    def _segments(self, turn: _Turn, with_assistant: bool) -> list:
        segs: list = [turn.head_ids, turn]
        segs.append(turn.tail_ids + (turn.assistant_ids if with_assistant else []))
        return segs

    def _forward(self, segments: list):
        """Prefill segments (token-id lists and turns, whose frames are image tokens) on the cache.

        Positions follow Qwen-VL's M-RoPE: text advances all three axes by one per token; a
        frame with an (h, w) token grid at start s gets (s, s + row, s + col), and the text after
        it starts at s + max(h, w). A generator step: yields the request, returns the logits of
        the last position.
        """
        ids, positions, image_turns = [], [], []
        pos = self.next_position
        for seg in segments:
            if isinstance(seg, _Turn):
                h, w = seg.grid
                rows = torch.arange(h).repeat_interleave(w)
                cols = torch.arange(w).repeat(h)
                positions.append(torch.stack([torch.zeros(h * w, dtype=torch.long), rows, cols]) + pos)
                ids += [self.processor.image_token_id] * (h * w)
                image_turns.append(seg)
                pos += max(h, w)
            elif seg:
                n = len(seg)
                positions.append(torch.arange(pos, pos + n).expand(3, n))
                ids += list(seg)
                pos += n
        self.next_position = pos
        return (yield _Prefill(ids, torch.cat(positions, dim=1), image_turns))

    def _prefill(self, pending: list[int], turn: _Turn):
        turn.position = self.next_position + len(pending)
        return (yield from self._forward([pending] + self._segments(turn, with_assistant=False)))

    def _prefill_context(self):
        """Prefill the whole kept context on an empty cache: system prompt, then every kept turn in order.

        Kept turns carry their full assistant part, so tokens pending for the cache are included.
        """
        self.pending_ids = []
        self.next_position = 0
        yield _RESET
        segments: list = [self.system_ids]
        pos = len(self.system_ids)
        for turn in self.turns:
            turn.position = pos
            pos += turn.span()
            segments += self._segments(turn, with_assistant=True)
        yield from self._forward(segments)

    def _refresh(self):
        """Start the cache again from the kept context (after turns were dropped or frames pooled)."""
        self.num_refreshes += 1
        yield from self._prefill_context()

    def _maybe_make_room(self, new_turn: _Turn):
        """Window policies: before adding a turn that would exceed the window, drop the oldest unpinned turns."""
        if self.memory == "round_decay":
            return
        unpinned = [t for t in self.turns if not t.pinned]
        if len(unpinned) + (0 if new_turn.pinned else 1) <= self.window_turns:
            return
        drop = {id(t) for t in unpinned[: self.evict_turns]}
        self.dropped_turns += len(drop)
        if self.memory == "sink_window":
            yield from self._evict(drop)
            return
        self.turns = [t for t in self.turns if id(t) not in drop]
        yield from self._refresh()

    def _evict(self, drop: set[int]):
        """Sink window: drop the turns ``drop`` from the cache in place and re-base the kept entries.

        Each kept turn moves to the position a fresh run over system + kept turns would give it
        (all three M-RoPE axes by the same delta: ``_rebase_keys``); the system prompt and the
        turns before the first dropped one (the sink) do not move. No token is recomputed.
        """
        self.num_evictions += 1
        last = self.turns[-1]
        n_system = len(self.system_ids)
        keep, shift = [torch.arange(n_system)], [torch.zeros(n_system, dtype=torch.long)]
        entry, pos, kept = n_system, n_system, []
        for turn in self.turns:
            # The last turn's pending tokens (its closing) are not in the cache yet.
            n = turn.num_tokens() - (len(self.pending_ids) if turn is last else 0)
            if id(turn) not in drop:
                keep.append(torch.arange(entry, entry + n))
                shift.append(torch.full((n,), pos - turn.position, dtype=torch.long))
                turn.position = pos
                pos += turn.span()
                kept.append(turn)
            entry += n
        if id(last) in drop:
            self.pending_ids = []
            self.next_position = pos
        else:
            self.next_position = pos - len(self.pending_ids)
        self.turns = kept
        yield _Evict(torch.cat(keep), torch.cat(shift))

    def _maybe_compress(self):
        """Round-decayed compression (StreamBridge): pool the oldest frames first until the context fits."""
        total = len(self.system_ids) + sum(t.num_tokens() for t in self.turns)
        if total <= self.token_budget:
            return
        target = int(self.token_budget * 0.75)
        changed = True
        while total > target and changed:
            changed = False
            for turn in self.turns[:-1]:  # the newest frame stays intact
                before = turn.num_tokens()
                if turn.pool():
                    total += turn.num_tokens() - before
                    changed = True
                    break
        while total > target and len([t for t in self.turns[:-1] if not t.pinned]) > 0:
            oldest = next(t for t in self.turns[:-1] if not t.pinned)
            total -= oldest.num_tokens()
            self.turns.remove(oldest)
            self.dropped_turns += 1
        yield from self._refresh()

    # ---- decisions and answers ------------------------------------------------------------
    def _pick(self, logits: torch.Tensor) -> int:
        if not self.do_sample:
            return int(logits.argmax())
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < self.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs.cpu(), 1, generator=self.generator))

    def _decide_and_answer(self, turn: _Turn, logits: torch.Tensor):
        decision_ids = self.decision_ids.tolist()
        silence_id, response_id = decision_ids[:2]
        quiet = {silence_id: "silence"}  # decisions that close the turn without output
        if len(decision_ids) == 3:
            quiet[decision_ids[2]] = "standby"
        restricted = logits[self.decision_ids.to(logits.device)]
        p_response = float(torch.softmax(restricted, dim=-1)[1]) if self.asked else None
        if not self.asked:
            token = silence_id  # before the question the model is silent (forced)
        elif self.response_threshold is not None:
            token = decision_ids[threshold_decision(restricted, p_response, self.response_threshold)]
        elif self.constrain_decision:
            token = decision_ids[self._pick(restricted)]
        else:
            token = self._pick(logits)
        k, time = turn.index, turn_time(turn.index, self.fps)
        eot = self.processor.end_of_turn_id
        newline = self.processor.newline_ids
        if token in quiet:
            turn.assistant_ids = [token, eot] + newline
            self.pending_ids = list(turn.assistant_ids)
            return StreamEvent(time, k, quiet[token], "", p_response, generated_ids=[token])
        # A response (or, with unconstrained sampling, some other first token): decode the turn's text.
        # The answer ends at <|im_end|> or after max_new_tokens (then the loop closes the turn itself:
        # that <|im_end|> is an input, not a generated token).
        generated = [token]
        answer: list[int] = []
        if token != eot:
            logits = yield from self._forward([[token]])
            for _ in range(self.max_new_tokens):
                nxt = self._pick(logits)
                generated.append(nxt)
                if nxt == eot:
                    break
                answer.append(nxt)
                logits = yield from self._forward([[nxt]])
        first = [] if token == eot else [token]
        turn.assistant_ids = first + answer + [eot] + newline
        self.pending_ids = [eot] + newline
        text = self.processor.decode(answer, skip_special_tokens=False).strip()
        decision = "response" if token == response_id else "invalid"
        return StreamEvent(time, k, decision, text, p_response, generated_ids=generated)


class _RowView:
    """A batched stream's view of its row in the batch cache (what ``StreamSession.cache`` offers)."""

    def __init__(self, batch: StreamSessions, index: int):
        self.batch, self.index = batch, index

    def get_seq_length(self) -> int:
        row = self.batch.rows[self.index]
        return 0 if row is None else int(self.batch.valid[row].sum())


class StreamSessions:
    """Several streams stepped together: every stream's turn is prefilled in one batched forward per frame.

    Each stream is a :class:`StreamSession` (its own turns, M-RoPE positions, window, question and
    answers) whose requests run on one padded batch cache, one row per open stream: each row holds
    that stream's entries in order, with holes; a (B, 1, L, T + L) boolean mask lets a token see the
    valid entries of its own row, causally (a padding token sees only itself, so no row is fully
    masked). New tokens are left-padded to the round's longest; positions are per stream.

    What is batched: the vision encoder (the frames of one step), each round's prefills (the
    turn of every stream; a stream's window refresh, a whole-context prefill after a reset, rides in
    the same round, padding the others to its length) and each answer-decoding round (one token for
    every stream still answering; the others get a padding column and wait — a frame's step ends
    when the last answer of that frame ends). Not batched: evictions and resets (per-row tensor
    operations), decisions and sampling (per stream, each with its own generator, so a seed gives
    the same tokens as the single session). Holes are squeezed out when they exceed a quarter of the
    longest row (``_compact``). Needs ``attn_implementation`` "sdpa" or "eager" (a custom 4-D mask).
    Events equal those of B single sessions: decisions and texts exactly (greedy), ``p_response`` to
    float32 rounding (the padded, masked kernels sum in another order).
    """

    def __init__(
        self,
        model: StreamProForConditionalGeneration,
        processor: StreamProProcessor,
        n: int,
        options: SessionOptions | None = None,
        *,
        generators: list[torch.Generator | None] | None = None,
        sessions: list[StreamSession] | None = None,
        **option_fields,
    ):
        """``sessions``: ready sessions (a subclass's, e.g. GRPO's rollout sessions) built with ``_batched=True``
        and ``options``; by default ``n`` plain ones with ``generators``."""
        if n < 1:
            raise ValueError(f"need at least one stream, got n={n}")
        generators = [None] * n if generators is None else list(generators)
        if len(generators) != n or (sessions is not None and len(sessions) != n):
            raise ValueError(f"{n} streams: give one generator (or None) and at most one session per stream")
        self.attn = model.config.get_text_config()._attn_implementation
        if self.attn not in ("sdpa", "eager"):
            raise ValueError(
                f"batched sessions pass a custom attention mask, which attn_implementation {self.attn!r} does not "
                "take: load the model with attn_implementation='sdpa' (or 'eager')"
            )
        self.model, self.processor = model, processor
        self.options = _options(options, option_fields)
        if sessions is None:
            sessions = [StreamSession(model, processor, self.options, generator=g, _batched=True) for g in generators]
        self.sessions = list(sessions)
        for i, s in enumerate(self.sessions):
            s.cache = _RowView(self, i)
        self.device = self.sessions[0].device
        self.rows: list[int | None] = list(range(n))  # each stream's row in the batch cache (None: closed)
        self.cache = DynamicCache(config=model.config.get_text_config())
        self.valid = torch.zeros(n, 0, dtype=torch.bool, device=self.device)  # (B, T): entry holds a token
        self.pad_id = processor.end_of_turn_id  # any non-image token: padding is masked out
        self._drive({i: s._prefill_context() for i, s in enumerate(self.sessions)})

    def ask(self, i: int, question: str) -> None:
        """A question arrives on stream ``i``: it goes into that stream's next turn."""
        self.sessions[i].ask(question)

    @torch.no_grad()
    def step(self, frames: list) -> list[StreamEvent | None]:
        """One frame per stream (``None``: that stream has no frame now); one event per stream that had one."""
        if len(frames) != len(self.sessions):
            raise ValueError(f"{len(frames)} frames for {len(self.sessions)} streams: give one per stream (None to skip)")
        turns, images = {}, []
        for i, frame in enumerate(frames):
            if frame is None:
                continue
            if self.rows[i] is None:
                raise ValueError(f"stream {i} is closed")
            session = self.sessions[i]
            turns[i] = session.next_turn_index
            images.append(session._check_frame(frame, turns[i]))
        if not turns:
            return [None] * len(frames)
        visions = _encode_frames(self.model, self.processor, images)
        results = self._drive({i: self.sessions[i]._step(k, v) for (i, k), v in zip(turns.items(), visions)})
        return [results.get(i) for i in range(len(frames))]

    def close(self, i: int) -> None:
        """Stream ``i`` has ended: its row leaves the batch cache."""
        row = self.rows[i]
        if row is None:
            return
        keep = torch.tensor([r for r in range(self.valid.shape[0]) if r != row], device=self.device, dtype=torch.long)
        for layer in self.cache.layers:
            if layer.keys is not None and layer.keys.numel():
                layer.keys, layer.values = layer.keys[keep], layer.values[keep]
        self.valid = self.valid[keep]
        self.rows = [None if r is None or r == row else r - (r > row) for r in self.rows]

    # ---- the batch cache -------------------------------------------------------------------
    def _drive(self, requests: dict) -> dict:
        """Run the streams' request generators together; the prefills of a round go in one forward."""
        current, results = {}, {}

        def advance(i, value):
            try:
                current[i] = requests[i].send(value)
            except StopIteration as stop:
                results[i] = stop.value
                current.pop(i, None)

        for i in requests:
            advance(i, None)
        while current:
            for i in list(current):
                while i in current and not isinstance(current[i], _Prefill):
                    self._row_request(self.rows[i], current[i])
                    advance(i, None)
            if current:
                logits = self._prefill_round(current)
                for i in list(current):
                    advance(i, logits[i])
        return results

    def _row_request(self, row: int, request) -> None:
        if request is _RESET:
            self.valid[row] = False
            return
        cols = self.valid[row].nonzero()[:, 0]
        keep_cols = cols[request.keep.to(self.device)]
        self.valid[row] = False
        self.valid[row, keep_cols] = True
        inv_freq = self.sessions[0].inv_freq
        for layer in self.cache.layers:
            _evict_entries(layer, row, keep_cols, request.shift, inv_freq)

    def _prefill_round(self, prefills: dict) -> dict:
        batch, total = self.valid.shape
        length = max(len(r.ids) for r in prefills.values())
        input_ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros(3, batch, length, dtype=torch.long)
        new_valid = torch.zeros(batch, length, dtype=torch.bool)
        images = []
        for i, request in sorted(prefills.items(), key=lambda item: self.rows[item[0]]):
            row, n = self.rows[i], len(request.ids)
            input_ids[row, length - n:] = torch.tensor(request.ids)
            position_ids[:, row, length - n:] = request.positions
            new_valid[row, length - n:] = True
            images += request.images  # row-major: the order in which the model fills image tokens
        new_valid = new_valid.to(self.device)
        keys_valid = torch.cat([self.valid, new_valid], dim=1)  # (B, T + L)
        query = torch.arange(length, device=self.device)[:, None]
        key = torch.arange(total + length, device=self.device)[None, :]
        mask = keys_valid[:, None, :] & (key <= total + query)[None]  # (B, L, T + L)
        mask[:, query[:, 0], total + query[:, 0]] = True  # every token sees itself: no fully masked row
        mask = mask[:, None]
        if self.attn == "eager":
            mask = torch.zeros(mask.shape, dtype=self.model.dtype, device=self.device).masked_fill(
                ~mask, torch.finfo(self.model.dtype).min
            )
        logits = _run_model(self.model, input_ids.to(self.device), position_ids.to(self.device), images,
                            self.cache, mask)
        self.valid = keys_valid
        out = {i: logits[self.rows[i]] for i in prefills}
        self._compact()
        return out

    def _compact(self) -> None:
        """Squeeze the holes out of the batch cache once they exceed a quarter of the longest row."""
        counts = self.valid.sum(dim=1)
        longest, total = int(counts.max()), self.valid.shape[1]
        if total - longest <= max(64, longest // 4):
            return
        # A stable sort puts each row's holes first and its entries after them, in order (left padding).
        order = torch.sort(self.valid.to(torch.int8), dim=1, stable=True).indices[:, total - longest:]  # (B, T')
        self.valid = self.valid.gather(1, order)
        for layer in self.cache.layers:
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)


def _frame_size(frame, k: int) -> tuple[int, int]:
    """(height, width) of a PIL image or HxWx3 array, with a clear error for anything else."""
    if hasattr(frame, "size") and callable(getattr(frame, "convert", None)):
        w, h = frame.size
        return (h, w)
    shape = getattr(frame, "shape", None)
    if shape is not None and len(shape) == 3 and shape[-1] == 3:
        return (int(shape[0]), int(shape[1]))
    raise ValueError(f"frame {k}: expected a PIL image or an HxWx3 array, got {type(frame).__name__}")


__all__ = [
    "SILENCE_TOKEN",
    "RESPONSE_TOKEN",
    "StreamEvent",
    "StreamProForConditionalGeneration",
    "StreamProPreTrainedModel",
    "SessionOptions",
    "StreamSession",
    "StreamSessions",
    "drive_stream",
]
