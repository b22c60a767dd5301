"""StreamPro streaming turn format: prompts, chat template and turn-by-turn encoding.

Self-contained Hub remote code: imports only torch, transformers and its sibling files. The
time convention (turn k ↔ time (k + 1) / fps) lives in ``time_streampro.py`` and is re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from transformers import BatchFeature, ProcessorMixin

from .time_streampro import num_turns, time_tag, turn_index_for_time, turn_time

# --------------------------------------------------------------------------------------
# Tokens, prompt and chat template
# --------------------------------------------------------------------------------------

SILENCE_TOKEN = "</Silence>"
RESPONSE_TOKEN = "</Response>"
DECISION_TOKENS = (SILENCE_TOKEN, RESPONSE_TOKEN)  # every checkpoint has these two
# Optional third decision (Streamo-style, docs/engine.md "Three states"): the event asked about is under
# way but not over yet. A checkpoint is three-state when its tokenizer has this token.
STANDBY_TOKEN = "</Standby>"
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
END_OF_TURN = "<|im_end|>"

DEFAULT_SYSTEM_PROMPT = (
    "You are StreamPro, a proactive assistant watching a live video, one frame per second. "
    "Each user turn shows the time interval and the newest frame; the user's question arrives in one "
    "of these turns. After every frame, decide: answer with </Silence> while the event the user asked "
    "about has not fully concluded or the video does not yet show enough to answer; answer with "
    "</Response> followed by a complete, final answer as soon as it has. Never give partial or "
    "speculative answers. Every answer begins with </Response>."
)

# Renders the same text as StreamProProcessor.conversation_text (one image pad per frame,
# expanded by the processor). Messages: system (str), user (list of {"type": "text"|"image"}),
# assistant (str: "</Silence>", "</Standby>" or "</Response>answer").
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# --------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------

class StreamEncoding(dict):
    """Model inputs of a whole stream plus SFT labels.

    Keys: ``input_ids`` (L,), ``labels`` (L,) with -100 on inputs, ``mm_token_type_ids`` (L,),
    ``pixel_values`` (P, C·t·p·p), ``image_grid_thw`` (F, 3), ``decision_positions`` (D,) —
    indices into ``input_ids`` of the supervised decision tokens, in turn order.
    """


class StreamProProcessor(ProcessorMixin):
    """Turns a stream (system prompt, timed questions, frames, assistant turns) into model inputs.

    A turn is ``<|im_start|>user\\n<ks-(k+1)s><|vision_start|><|image_pad|>…<|vision_end|>{question}<|im_end|>\\n``
    followed by ``<|im_start|>assistant\\n`` and the assistant's turn: ``</Silence><|im_end|>\\n``,
    ``</Response>{answer}<|im_end|>\\n`` or, for a three-state checkpoint (tokenizer with
    ``</Standby>``), ``</Standby><|im_end|>\\n``. Every turn starts with a special token and ends with a
    lone ``\\n``, so tokenising the whole stream equals concatenating the per-turn encodings:
    incremental inference sees exactly what training sees.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, system_prompt=None):
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)
        self.system_prompt = system_prompt
        vocab = tokenizer.get_vocab()
        missing = [t for t in DECISION_TOKENS + (IMAGE_PAD, END_OF_TURN) if t not in vocab]
        if missing:
            raise ValueError(
                f"tokenizer lacks {missing}; StreamPro needs the Qwen chat tokens and the decision tokens "
                "(convert a base checkpoint with `streampro convert-backbone SRC --out DST`)"
            )
        self.silence_token_id = vocab[SILENCE_TOKEN]
        self.response_token_id = vocab[RESPONSE_TOKEN]
        self._standby = (len(tokenizer), vocab.get(STANDBY_TOKEN))  # (vocabulary size, id) it was read at
        self.image_token_id = vocab[IMAGE_PAD]
        self.end_of_turn_id = vocab[END_OF_TURN]
        self.newline_ids = self.encode_text("\n")

    @property
    def standby_token_id(self) -> int | None:
        """The id of ``</Standby>``; ``None`` for a two-state checkpoint. Read again when the vocabulary grows."""
        if self._standby[0] != len(self.tokenizer):  # e.g. after add_standby_token(processor.tokenizer, model)
            self._standby = (len(self.tokenizer), self.tokenizer.get_vocab().get(STANDBY_TOKEN))
        return self._standby[1]

    @property
    def decision_token_ids(self) -> tuple[int, ...]:
        """``(silence, response)`` or, three-state, ``(silence, response, standby)``; index 1 is response."""
        ids = (self.silence_token_id, self.response_token_id)
        return ids if self.standby_token_id is None else ids + (self.standby_token_id,)

    # ---- text pieces ---------------------------------------------------------------
    def system_text(self, system: str | None = None) -> str:
        prompt = system if system is not None else (self.system_prompt or DEFAULT_SYSTEM_PROMPT)
        return f"<|im_start|>system\n{prompt}<|im_end|>\n"

    @staticmethod
    def user_text(turn_index: int, fps: float, num_image_tokens: int, question: str | None = None) -> str:
        """User part of a turn up to the assistant header (what inference prefills before deciding)."""
        vision = "<|vision_start|>" + IMAGE_PAD * num_image_tokens + "<|vision_end|>"
        return (
            f"<|im_start|>user\n{time_tag(turn_index, fps)}{vision}{question or ''}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )

    @staticmethod
    def assistant_text(response: str | None, standby: bool = False) -> str:
        """``None`` → a silent turn (``standby=True``: a standby turn); a string → a response with that answer."""
        if standby:
            if response is not None:
                raise ValueError("a turn is either a standby turn or a response, not both")
            return f"{STANDBY_TOKEN}{END_OF_TURN}\n"
        if response is None:
            return f"{SILENCE_TOKEN}{END_OF_TURN}\n"
        return f"{RESPONSE_TOKEN}{response}{END_OF_TURN}\n"

    # ---- tokens ----------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def num_image_tokens(self, image_grid_thw: torch.Tensor) -> list[int]:
        merge = self.image_processor.merge_size ** 2
        return [int(n) // merge for n in image_grid_thw.prod(-1).tolist()]

    def process_frames(self, frames) -> dict:
        """Frames (PIL images or HxWx3 uint8 arrays) → ``pixel_values`` and ``image_grid_thw``."""
        frames = list(frames)
        if not frames:
            raise ValueError("no frames to process")
        out = self.image_processor(images=frames, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def _with_mm_types(self, ids: list[int]) -> dict:
        input_ids = torch.tensor(ids, dtype=torch.long)
        return {"input_ids": input_ids, "mm_token_type_ids": (input_ids == self.image_token_id).int()}

    def encode_system(self, system: str | None = None) -> dict:
        return self._with_mm_types(self.encode_text(self.system_text(system)))

    def encode_user_turn(self, frame, turn_index: int, fps: float = 1.0, question: str | None = None) -> dict:
        """One turn's prefill chunk: time tag, frame, optional question, assistant header."""
        vision = self.process_frames([frame])
        (n,) = self.num_image_tokens(vision["image_grid_thw"])
        out = self._with_mm_types(self.encode_text(self.user_text(turn_index, fps, n, question)))
        return {**out, **vision}

    def encode_assistant(self, response: str | None, standby: bool = False) -> list[int]:
        return self.encode_text(self.assistant_text(response, standby))

    def _standby_turns(self, standby: Iterable[int], responses: dict[int, str]) -> set[int]:
        """Validate standby turn indices: a three-state tokenizer, and no turn that is also a response."""
        turns = _standby_set(standby, responses)
        if turns and self.standby_token_id is None:
            raise ValueError(
                f"standby turns {sorted(turns)} given but the tokenizer has no {STANDBY_TOKEN} (a two-state "
                "checkpoint); add it with streampro.backbones.add_standby_token or "
                "`streampro convert-backbone SRC --out DST --three-state`"
            )
        return turns

    # ---- whole streams ---------------------------------------------------------------
    def conversation_text(
        self,
        num_image_tokens: list[int],
        questions: dict[int, str],
        responses: dict[int, str],
        fps: float = 1.0,
        system: str | None = None,
        standby: Iterable[int] = (),
    ) -> str:
        """The whole stream as one string (image pads expanded); ``standby``: turns closed with ``</Standby>``."""
        standby = self._standby_turns(standby, responses)
        parts = [self.system_text(system)]
        for k, n in enumerate(num_image_tokens):
            parts.append(self.user_text(k, fps, n, questions.get(k)))
            parts.append(self.assistant_text(responses.get(k), k in standby))
        return "".join(parts)

    def encode_conversation(
        self,
        frames,
        questions: dict[int, str],
        responses: dict[int, str],
        fps: float = 1.0,
        system: str | None = None,
        turns: list[int] | None = None,
        label_from: int = 0,
        standby: Iterable[int] = (),
    ) -> StreamEncoding:
        """Encode a whole streaming conversation with SFT labels (the label builder).

        ``frames[k]`` is turn k's frame; ``questions`` / ``responses`` map turn index → text
        (no response → a silent turn). Supervised, exactly what the model must generate: the
        decision token of every turn from the first question's turn on, and after
        ``</Response>`` the answer text and ``<|im_end|>``. Inputs only: the system prompt, user
        turns, assistant headers, turns before the question (inference forces silence there),
        the ``<|im_end|>`` after ``</Silence>`` (the inference loop closes silent turns itself)
        and the newline that ends every turn.

        A training window (docs/training.md): ``turns`` lists the turn indices in the context, in
        order (default: every turn) — the engine's kept context after a slide, each turn with its
        own time tag; only turns ``>= label_from`` are supervised, the earlier ones are context
        whose assistant tokens are inputs. Every question and response must sit on a listed turn.

        ``standby`` (three-state checkpoints only, docs/engine.md "Three states"): turns closed with
        ``</Standby><|im_end|>\\n`` instead of ``</Silence>``, supervised like a silent turn (the
        decision token is the target, its ``<|im_end|>`` an input). A standby turn must not be a
        response turn, must sit on a listed turn and must not come before the first question.
        """
        frames = list(frames)
        turns = list(range(len(frames))) if turns is None else [int(k) for k in turns]
        if not questions:
            raise ValueError("a stream needs at least one question (questions is empty)")
        standby = self._standby_turns(standby, responses)
        bad = [k for k in list(questions) + list(responses) + sorted(standby) + turns if not 0 <= k < len(frames)]
        if bad:
            raise ValueError(f"turn indices {sorted(bad)} are outside the stream of {len(frames)} frames")
        if any(b <= a for a, b in zip(turns, turns[1:])):
            raise ValueError(f"window turns must be strictly increasing, got {turns}")
        missing = sorted((set(questions) | set(responses) | standby) - set(turns))
        if missing:
            raise ValueError(
                f"questions, responses or standby turns on turns {missing} that are not in the window's turns"
            )
        first_question = min(questions)
        early = [k for k in list(responses) + sorted(standby) if k < first_question]
        if early:
            raise ValueError(
                f"responses or standby turns on turns {sorted(early)} come before the first question "
                f"(turn {first_question}); the model is silent until asked"
            )
        vision = self.process_frames([frames[k] for k in turns])
        counts = self.num_image_tokens(vision["image_grid_thw"])
        ids: list[int] = self.encode_text(self.system_text(system))
        labels: list[int] = [-100] * len(ids)
        decision_positions: list[int] = []
        for k, n in zip(turns, counts):
            user = self.encode_text(self.user_text(k, fps, n, questions.get(k)))
            ids += user
            labels += [-100] * len(user)
            supervised = k >= first_question and k >= label_from
            decision_positions += [len(ids)] if supervised else []
            response = responses.get(k)
            if response is not None:
                decision = self.response_token_id
            else:
                decision = self.standby_token_id if k in standby else self.silence_token_id
            ids.append(decision)
            labels.append(decision if supervised else -100)
            if response is not None:
                answer = self.encode_text(response) + [self.end_of_turn_id]
                ids += answer
                labels += answer if supervised else [-100] * len(answer)
            else:
                ids.append(self.end_of_turn_id)
                labels.append(-100)
            ids += self.newline_ids
            labels += [-100] * len(self.newline_ids)
        enc = self._with_mm_types(ids)
        return StreamEncoding(
            **enc,
            labels=torch.tensor(labels, dtype=torch.long),
            decision_positions=torch.tensor(decision_positions, dtype=torch.long),
            **vision,
        )

    def __call__(self, text=None, images=None, videos=None, return_tensors="pt", fps: float = 1.0, **kwargs):
        """Generic Qwen-style call for plain (offline) image / video QA with ``model.generate``.

        Each ``<|image_pad|>`` in ``text`` takes the next image. Each ``<|video_pad|>`` (alone or
        inside ``<|vision_start|>…<|vision_end|>``) takes the next video — a sequence of frames
        sampled at ``fps`` (or a (T, H, W, 3) array) — written as StreamPro sees a stream: one
        time-tagged image per frame, ``<ks-(k+1)s><|vision_start|><|image_pad|>…<|vision_end|>``
        (docs/method.md §1). Images may be nested per sample (what ``apply_chat_template`` passes).
        Returns a ``BatchFeature`` (``input_ids``, ``attention_mask``, ``mm_token_type_ids``,
        ``pixel_values``, ``image_grid_thw``).
        """
        if text is None:
            raise ValueError("text is required")
        kwargs.pop("audio", None)  # apply_chat_template passes audio=None
        kwargs.pop("add_special_tokens", None)  # the text already holds the chat tokens
        texts = [text] if isinstance(text, str) else list(text)
        images = list(_flatten_images(images)) if images is not None else []
        videos = _as_videos(videos) if videos is not None else []
        pieces = [re.split(f"({re.escape(IMAGE_PAD)}|{re.escape(VIDEO_PAD)})", _bare_video_pads(t)) for t in texts]
        # Frames in text order: an image placeholder takes one image, a video placeholder all its frames.
        wanted = [piece for parts in pieces for piece in parts if piece in (IMAGE_PAD, VIDEO_PAD)]
        n_image, n_video = wanted.count(IMAGE_PAD), wanted.count(VIDEO_PAD)
        if (n_image, n_video) != (len(images), len(videos)):
            raise ValueError(
                f"text has {n_image} {IMAGE_PAD} and {n_video} {VIDEO_PAD} placeholders but {len(images)} image(s) "
                f"and {len(videos)} video(s) were given; pass one image per {IMAGE_PAD} and one video per {VIDEO_PAD}"
            )
        image_iter, video_iter = iter(images), iter(videos)
        frames = [f for piece in wanted for f in ([next(image_iter)] if piece == IMAGE_PAD else next(video_iter))]
        vision = self.process_frames(frames) if frames else {}
        counts = iter(self.num_image_tokens(vision["image_grid_thw"])) if vision else iter(())
        video_iter = iter(videos)
        expanded = []
        for parts in pieces:
            out = ""
            for piece in parts:
                if piece == IMAGE_PAD:
                    out += IMAGE_PAD * next(counts)
                elif piece == VIDEO_PAD:
                    for k in range(len(next(video_iter))):
                        out += f"{time_tag(k, fps)}<|vision_start|>{IMAGE_PAD * next(counts)}<|vision_end|>"
                else:
                    out += piece
            expanded.append(out)
        enc = self.tokenizer(expanded, add_special_tokens=False, padding=True, return_tensors=return_tensors, **kwargs)
        data = {**enc, "mm_token_type_ids": (enc["input_ids"] == self.image_token_id).int(), **vision}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"]


StreamProProcessor.register_for_auto_class("AutoProcessor")


def _standby_set(standby: Iterable[int], responses: dict[int, str]) -> set[int]:
    """Standby turn indices as a set; a turn that is also a response turn is a ValueError."""
    turns = {int(k) for k in standby}
    both = sorted(turns & set(responses))
    if both:
        raise ValueError(f"turns {both} are both standby turns and response turns; a turn has one decision")
    return turns


def _is_frame(x) -> bool:
    """A PIL image or an HxWxC array (a single frame, not a list of them)."""
    return callable(getattr(x, "convert", None)) or getattr(x, "ndim", None) == 3


def _flatten_images(images):
    if _is_frame(images):
        yield images
        return
    for item in images:
        yield from _flatten_images(item)


def _as_videos(videos) -> list[list]:
    """One video (frames or a (T, H, W, 3) array) or a list of them → a list of frame lists."""
    if getattr(videos, "ndim", None) == 4 or (isinstance(videos, (list, tuple)) and videos and _is_frame(videos[0])):
        videos = [videos]
    return [list(v) for v in videos]


def _bare_video_pads(text: str) -> str:
    """``<|vision_start|><|video_pad|><|vision_end|>`` → ``<|video_pad|>`` (each frame gets its own markers)."""
    return text.replace(f"<|vision_start|>{VIDEO_PAD}<|vision_end|>", VIDEO_PAD)


def stream_messages(
    num_turns: int,
    questions: dict[int, str],
    responses: dict[int, str],
    fps: float = 1.0,
    system: str | None = None,
    standby: Iterable[int] = (),
) -> list[dict]:
    """The stream as chat messages for ``apply_chat_template`` (one image per user turn).

    ``standby``: the turns answered ``</Standby>`` (three-state checkpoints).
    """
    standby = _standby_set(standby, responses)
    messages = [{"role": "system", "content": system if system is not None else DEFAULT_SYSTEM_PROMPT}]
    for k in range(num_turns):
        content = [{"type": "text", "text": time_tag(k, fps)}, {"type": "image"}]
        if k in questions:
            content.append({"type": "text", "text": questions[k]})
        messages.append({"role": "user", "content": content})
        response = responses.get(k)
        if response is not None:
            reply = RESPONSE_TOKEN + response
        else:
            reply = STANDBY_TOKEN if k in standby else SILENCE_TOKEN
        messages.append({"role": "assistant", "content": reply})
    return messages


__all__ = [
    "CHAT_TEMPLATE",
    "DECISION_TOKENS",
    "DEFAULT_SYSTEM_PROMPT",
    "RESPONSE_TOKEN",
    "SILENCE_TOKEN",
    "STANDBY_TOKEN",
    "StreamEncoding",
    "StreamProProcessor",
    "num_turns",
    "stream_messages",
    "time_tag",
    "turn_index_for_time",
    "turn_time",
]
