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
in the context. Memory policies:

* ``"window"`` (default): the context holds the system prompt, every turn in which a question
  was asked (pinned), and at most ``window_turns`` other turns. When a new turn would exceed
  that, the oldest ``evict_turns`` unpinned turns are dropped and the kept turns are prefilled
  again from cached vision features (no vision re-encoding). The state after a slide is
  therefore *exactly* a fresh run over the kept turns; between slides the window grows by one
  turn per frame. Cost: one turn per frame plus, every ``evict_turns`` frames, one prefill of
  the kept window.
* ``"round_decay"`` (StreamBridge, docs/method.md §7): no turn is dropped while compression can help.
  When the context exceeds ``token_budget`` tokens, adjacent frame tokens of the oldest turns are
  average-pooled (2x along the longer side of the token grid), oldest turn first, round by round,
  until the context fits in 3/4 of the budget (the slack makes re-prefills periodic instead of
  per-frame); the newest frame is never pooled. If every older frame is down to one token and
  the context still does not fit, the oldest unpinned turns are dropped. The kept context is
  then prefilled again, with positions recomputed for the pooled grids.
"""

from __future__ import annotations

import math
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

    def prepare_inputs_for_generation(self, *args, **kwargs):
        # Plain `generate()` works like the backbone's (pixel values only on the first step, rope deltas).
        return _backbone_classes(self.config.backbone)[2].prepare_inputs_for_generation(self, *args, **kwargs)

    def _prepare_position_ids_for_generation(self, *args, **kwargs):
        return _backbone_classes(self.config.backbone)[2]._prepare_position_ids_for_generation(self, *args, **kwargs)

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
        missing = sorted(set(info.get("missing_keys", [])) - tied)
        problems = {
            "missing": missing,
            "unexpected": sorted(info.get("unexpected_keys", [])),
            "mismatched": [str(m) for m in info.get("mismatched_keys", [])],
        }
        if any(problems.values()):
            source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            details = "; ".join(f"{k}: {v[:5]}{' ...' if len(v) > 5 else ''}" for k, v in problems.items() if v)
            raise ValueError(
                f"checkpoint {source} does not match StreamProForConditionalGeneration ({details}). "
                "Convert base Qwen-VL checkpoints with `streampro convert-backbone SRC --out DST`."
            )
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights plus remote code, with ``auto_map`` for every Auto class StreamPro supports."""
        self.config.auto_map = dict(AUTO_MAP_MODEL)
        return super().save_pretrained(save_directory, *args, **kwargs)

    # ---- streaming ----------------------------------------------------------------------
    def stream_session(self, processor: StreamProProcessor, **options) -> StreamSession:
        """A live session: call ``ask(text)`` when a question arrives and ``step(frame)`` per frame."""
        return StreamSession(self, processor, **options)

    @torch.no_grad()
    def generate_stream(
        self,
        frames: Iterable,
        question: str | list[tuple[float, str]] | None,
        *,
        processor: StreamProProcessor,
        question_time: float = 0.0,
        fps: float = 1.0,
        window_turns: int = 200,
        evict_turns: int | None = None,
        max_new_tokens: int = 64,
        response_threshold: float | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        memory: str = "window",
        token_budget: int | None = None,
        system_prompt: str | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[StreamEvent]:
        """Stream ``frames`` and yield one :class:`StreamEvent` per frame.

        Args:
            frames: PIL images / HxWx3 uint8 arrays, or ``(time, image)`` pairs from
                ``streampro.video`` (times must follow the turn convention at ``fps``).
            question: the question text (asked at ``question_time`` seconds), or a list of
                ``(time, text)`` for several questions arriving mid-stream.
            processor: the checkpoint's :class:`StreamProProcessor`.
            window_turns / evict_turns / memory / token_budget: the memory policy (module docstring).
            response_threshold: respond when ``p_response`` ≥ this, instead of the arg-max decision.
            do_sample / temperature / top_p: sampling for the decision and the answer text.
        """
        questions = _normalise_questions(question, question_time)
        session = StreamSession(
            self,
            processor,
            fps=fps,
            window_turns=window_turns,
            evict_turns=evict_turns,
            max_new_tokens=max_new_tokens,
            response_threshold=response_threshold,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            memory=memory,
            token_budget=token_budget,
            system_prompt=system_prompt,
            generator=generator,
        )
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


# ======================================================================================
# Streaming engine
# ======================================================================================


@dataclass
class StreamEvent:
    """What happened on one frame (one turn)."""

    time: float  # the turn's time, (k + 1) / fps
    frame_index: int  # k
    decision: str  # "silence" | "response" | "invalid" (unconstrained sampling only)
    text: str  # the answer ("" when silent)
    p_response: float | None  # P(</Response>) renormalised over the two decision tokens; None before the question
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

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def num_tokens(self) -> int:
        return len(self.head_ids) + self.num_image_tokens + len(self.tail_ids) + len(self.assistant_ids)

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


class StreamSession:
    """The streaming decision loop over one stream, with KV-cache reuse and bounded memory.

    Use :meth:`ask` when a question arrives and :meth:`step` for every frame; each step
    returns a :class:`StreamEvent`. ``generate_stream`` is a thin wrapper around this.
    """

    def __init__(
        self,
        model: StreamProForConditionalGeneration,
        processor: StreamProProcessor,
        *,
        fps: float = 1.0,
        window_turns: int = 200,
        evict_turns: int | None = None,
        max_new_tokens: int = 64,
        response_threshold: float | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        memory: str = "window",
        token_budget: int | None = None,
        system_prompt: str | None = None,
        constrain_decision: bool = True,
        generator: torch.Generator | None = None,
    ):
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if window_turns < 1:
            raise ValueError(f"window_turns must be >= 1, got {window_turns}")
        evict_turns = max(1, window_turns // 4) if evict_turns is None else evict_turns
        if not 1 <= evict_turns <= window_turns:
            raise ValueError(f"evict_turns must be in [1, window_turns={window_turns}], got {evict_turns}")
        if memory not in ("window", "round_decay"):
            raise ValueError(f"memory must be 'window' or 'round_decay', got {memory!r}")
        if memory == "round_decay" and (token_budget is None or token_budget <= 0):
            raise ValueError("memory='round_decay' needs a positive token_budget")
        if response_threshold is not None and not 0.0 <= response_threshold <= 1.0:
            raise ValueError(f"response_threshold must be in [0, 1], got {response_threshold}")
        if do_sample and temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
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
        self.model, self.processor = model, processor
        self.fps, self.window_turns, self.evict_turns = fps, window_turns, evict_turns
        self.max_new_tokens, self.response_threshold = max_new_tokens, response_threshold
        self.do_sample, self.temperature, self.top_p = do_sample, temperature, top_p
        self.memory, self.token_budget = memory, token_budget
        self.constrain_decision, self.generator = constrain_decision, generator
        self.decision_ids = torch.tensor([cfg.silence_token_id, cfg.response_token_id])
        self.device = next(model.parameters()).device
        self.system_ids = processor.encode_system(system_prompt)["input_ids"].tolist()
        self.turns: list[_Turn] = []
        self.pending_ids: list[int] = []  # tokens decided but not yet in the cache (fed with the next chunk)
        self._question: str | None = None
        self.asked = False
        self.frame_size: tuple[int, int] | None = None
        self.num_refreshes = 0  # how many times the kept context was prefilled again
        self.dropped_turns = 0  # turns evicted so far (turn indices keep counting)
        self._prefill_context()

    # ---- public API ---------------------------------------------------------------------
    def ask(self, question: str) -> None:
        """A question arrives: it goes into the user turn of the next frame."""
        if not question or not question.strip():
            raise ValueError("question text is empty")
        self._question = question if self._question is None else f"{self._question} {question}"

    @property
    def context_tokens(self) -> int:
        return self.cache.get_seq_length()

    @torch.no_grad()
    def step(self, frame) -> StreamEvent:
        """Ingest one frame (one turn) and return the decision for it."""
        k = len(self.turns) + self.dropped_turns
        image = self._check_frame(frame, k)
        question, self._question = self._question, None
        if question is not None:
            self.asked = True
        turn = self._make_turn(k, image, question)
        self._maybe_make_room(turn)
        self.turns.append(turn)
        logits = self._prefill(self.pending_ids, turn)
        self.pending_ids = []
        self.last_decision_logits = logits  # (V,) float32, kept for inspection and tests
        event = self._decide_and_answer(turn, logits)
        event.question = question
        if self.memory == "round_decay":
            self._maybe_compress()
        event.context_tokens = self.context_tokens + len(self.pending_ids)
        return event

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

    def _make_turn(self, k: int, image, question: str | None) -> _Turn:
        vision = self.processor.process_frames([image])
        pixel_values = vision["pixel_values"].to(self.device, self.model.dtype)
        grid_thw = vision["image_grid_thw"].to(self.device)
        out = self.model.model.get_image_features(pixel_values, grid_thw, return_dict=True)
        features = out.pooler_output[0] if isinstance(out.pooler_output, (list, tuple)) else out.pooler_output
        deepstack = getattr(out, "deepstack_features", None)
        if deepstack is not None:
            deepstack = [d[0] if isinstance(d, (list, tuple)) else d for d in deepstack]
        merge = self.model.config.vision_config.spatial_merge_size
        _, h, w = grid_thw[0].tolist()
        text = self.processor.user_text(k, self.fps, 1, question)
        head_text, tail_text = text.split("<|image_pad|>")
        head = self.processor.encode_text(head_text)
        tail = self.processor.encode_text(tail_text)
        return _Turn(k, head, tail, features, deepstack, (h // merge, w // merge), pinned=question is not None)

    # ---- positions and prefill ------------------------------------------------------------
    def _segments(self, turn: _Turn, with_assistant: bool) -> list:
        segs: list = [turn.head_ids, turn]
        segs.append(turn.tail_ids + (turn.assistant_ids if with_assistant else []))
        return segs

    def _forward(self, segments: list) -> torch.Tensor:
        """Prefill segments (token-id lists and turns, whose frames are image tokens) on the cache.

        Positions follow Qwen-VL's M-RoPE: text advances all three axes by one per token; a
        frame with an (h, w) token grid at start s gets (s, s + row, s + col), and the text after
        it starts at s + max(h, w). Returns the logits of the last position.
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
        input_ids = torch.tensor([ids], device=self.device)
        position_ids = torch.cat(positions, dim=1)[:, None, :].to(self.device)  # (3, 1, L)
        kwargs = {}
        if image_turns:
            pooled = [t.features for t in image_turns]
            enc = BaseModelOutputWithPooling(pooler_output=pooled)
            if image_turns[0].deepstack is not None:
                layers = len(image_turns[0].deepstack)
                enc.deepstack_features = [[t.deepstack[i] for t in image_turns] for i in range(layers)]
            kwargs["mm_encoder_outputs"] = {"image": enc}
        out = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        self.next_position = pos
        return out.logits[0, -1].float()

    def _prefill(self, pending: list[int], turn: _Turn) -> torch.Tensor:
        return self._forward([pending] + self._segments(turn, with_assistant=False))

    def _prefill_context(self) -> None:
        """Prefill the whole kept context on an empty cache: system prompt, then every kept turn in order.

        Kept turns carry their full assistant part, so tokens pending for the cache are included.
        One forward on an empty cache: attention is plain causal, so SDPA needs no explicit mask.
        """
        self.pending_ids = []
        self.cache = DynamicCache(config=self.model.config.get_text_config())
        self.next_position = 0
        segments: list = [self.system_ids]
        for turn in self.turns:
            segments += self._segments(turn, with_assistant=True)
        self._forward(segments)

    def _refresh(self) -> None:
        """Start the cache again from the kept context (after turns were dropped or frames pooled)."""
        self.num_refreshes += 1
        self._prefill_context()

    def _maybe_make_room(self, new_turn: _Turn) -> None:
        """Window policy: before adding a turn that would exceed the window, drop the oldest unpinned turns."""
        if self.memory != "window":
            return
        unpinned = [t for t in self.turns if not t.pinned]
        if len(unpinned) + (0 if new_turn.pinned else 1) <= self.window_turns:
            return
        drop = {id(t) for t in unpinned[: self.evict_turns]}
        self.dropped_turns += len(drop)
        self.turns = [t for t in self.turns if id(t) not in drop]
        self._refresh()

    def _maybe_compress(self) -> None:
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
        self._refresh()

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

    def _decide_and_answer(self, turn: _Turn, logits: torch.Tensor) -> StreamEvent:
        silence_id, response_id = self.decision_ids.tolist()
        two_way = logits[self.decision_ids.to(logits.device)]
        p_response = float(torch.softmax(two_way, dim=-1)[1]) if self.asked else None
        if not self.asked:
            token = silence_id  # before the question the model is silent (forced)
        elif self.response_threshold is not None:
            token = response_id if p_response >= self.response_threshold else silence_id
        elif self.constrain_decision:
            token = (silence_id, response_id)[self._pick(two_way)]
        else:
            token = self._pick(logits)
        k, time = turn.index, turn_time(turn.index, self.fps)
        eot = self.processor.end_of_turn_id
        newline = self.processor.newline_ids
        if token == silence_id:
            turn.assistant_ids = [silence_id, eot] + newline
            self.pending_ids = list(turn.assistant_ids)
            return StreamEvent(time, k, "silence", "", p_response, generated_ids=[silence_id])
        # A response (or, with unconstrained sampling, some other first token): decode the turn's text.
        # The answer ends at <|im_end|> or after max_new_tokens (then the loop closes the turn itself:
        # that <|im_end|> is an input, not a generated token).
        generated = [token]
        answer: list[int] = []
        if token != eot:
            logits = self._forward([[token]])
            for _ in range(self.max_new_tokens):
                nxt = self._pick(logits)
                generated.append(nxt)
                if nxt == eot:
                    break
                answer.append(nxt)
                logits = self._forward([[nxt]])
        first = [] if token == eot else [token]
        turn.assistant_ids = first + answer + [eot] + newline
        self.pending_ids = [eot] + newline
        text = self.processor.decode(answer, skip_special_tokens=False).strip()
        decision = "response" if token == response_id else "invalid"
        return StreamEvent(time, k, decision, text, p_response, generated_ids=generated)


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
    "StreamSession",
]
