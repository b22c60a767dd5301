"""Input format of the activation model (docs/activation.md): the question, then frames, each followed by ``<ACT>``.

Self-contained Hub remote code: imports only torch, transformers and its sibling files.

One window of the stream is one sequence::

    <|im_start|>user\\n{question}<|im_end|>\\n
    <ks-(k+1)s><|vision_start|><|image_pad|>×N<|vision_end|><ACT>      (one line per frame, no newline)
    ...

The model is causal, so the score read at a frame's ``<ACT>`` depends on the question and on that
frame and the earlier frames of the window only: one forward scores every frame of a window,
exactly as a frame-by-frame pass over the same window would (StreamBridge's ACT(Q, F_tQ:t-1, F_t)).
"""

from __future__ import annotations

import torch
from transformers import BatchFeature, ProcessorMixin

from .processing_streampro import StreamProProcessor
from .time_streampro import time_tag

ACT_TOKEN = "<ACT>"
IMAGE_PAD = "<|image_pad|>"
REQUIRED_TOKENS = (ACT_TOKEN, IMAGE_PAD, "<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>")
# Label of a position that is not scored (every token but <ACT>), as in transformers' losses.
IGNORE = -100.0


class StreamProActivationProcessor(ProcessorMixin):
    """Tokenizer (with ``<ACT>``) + Qwen-VL image processor; builds the windows the activation model scores."""

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)
        vocab = tokenizer.get_vocab()
        missing = [t for t in REQUIRED_TOKENS if t not in vocab]
        if missing:
            raise ValueError(
                f"tokenizer lacks {missing}; the activation model needs the Qwen-VL chat tokens and {ACT_TOKEN} "
                "(`streampro train activation` adds it)"
            )
        self.act_token_id = vocab[ACT_TOKEN]
        self.image_token_id = vocab[IMAGE_PAD]
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else vocab["<|im_end|>"]

    # ---- pieces -------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def question_ids(self, question: str) -> list[int]:
        return self.encode_text(f"<|im_start|>user\n{question}<|im_end|>\n")

    def frame_ids(self, turn_index: int, fps: float, num_image_tokens: int) -> list[int]:
        """``<tag><|vision_start|>`` + image pads + ``<|vision_end|><ACT>`` for one frame."""
        head = self.encode_text(f"{time_tag(turn_index, fps)}<|vision_start|>")
        return head + [self.image_token_id] * num_image_tokens + self.encode_text("<|vision_end|>") + [self.act_token_id]

    # The frames are processed exactly as the streaming model's processor does it.
    num_image_tokens = StreamProProcessor.num_image_tokens
    process_frames = StreamProProcessor.process_frames

    def window_ids(self, question: str, turns: list[int], counts: list[int], fps: float = 1.0) -> list[int]:
        """Token ids of one window: the question, then each turn's frame (``counts[i]`` image tokens) and ``<ACT>``."""
        if len(turns) != len(counts):
            raise ValueError(f"{len(turns)} turns but {len(counts)} image-token counts")
        ids = self.question_ids(question)
        for k, n in zip(turns, counts):
            ids += self.frame_ids(k, fps, n)
        return ids

    # ---- windows and batches ----------------------------------------------------------------
    def encode(self, question: str, frames, turns: list[int], labels: list[float] | None = None,
               fps: float = 1.0) -> dict:
        """One window as model inputs: ``frames[i]`` is turn ``turns[i]``'s frame; ``labels[i]`` its 0/1 label.

        Returns 1-D ``input_ids``, ``mm_token_type_ids``, ``labels`` (float; the frame's label at its
        ``<ACT>``, -100 elsewhere; only with ``labels``) and the frames' ``pixel_values`` /
        ``image_grid_thw``.
        """
        frames = list(frames)
        if len(frames) != len(turns):
            raise ValueError(f"{len(frames)} frames for {len(turns)} turns")
        if labels is not None and len(labels) != len(turns):
            raise ValueError(f"{len(labels)} labels for {len(turns)} turns")
        vision = self.process_frames(frames)
        ids = self.window_ids(question, turns, self.num_image_tokens(vision["image_grid_thw"]), fps)
        input_ids = torch.tensor(ids, dtype=torch.long)
        out = {"input_ids": input_ids, "mm_token_type_ids": (input_ids == self.image_token_id).int(), **vision}
        if labels is not None:
            target = torch.full((len(ids),), IGNORE)
            target[input_ids == self.act_token_id] = torch.tensor([float(x) for x in labels])
            out["labels"] = target
        return out

    def pad(self, encodings: list[dict]) -> BatchFeature:
        """Right-pad windows from :meth:`encode` into one batch (vision inputs concatenated in batch order)."""
        if not encodings:
            raise ValueError("no windows to batch")
        length = max(len(e["input_ids"]) for e in encodings)
        batch = len(encodings)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        mm = torch.zeros((batch, length), dtype=torch.int)
        has_labels = all("labels" in e for e in encodings)
        labels = torch.full((batch, length), IGNORE) if has_labels else None
        for i, e in enumerate(encodings):
            n = len(e["input_ids"])
            input_ids[i, :n], attention_mask[i, :n], mm[i, :n] = e["input_ids"], 1, e["mm_token_type_ids"]
            if has_labels:
                labels[i, :n] = e["labels"]
        data = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": mm,
            "pixel_values": torch.cat([e["pixel_values"] for e in encodings]),
            "image_grid_thw": torch.cat([e["image_grid_thw"] for e in encodings]),
        }
        if has_labels:
            data["labels"] = labels
        return BatchFeature(data=data)

    def __call__(self, question: str, frames, turns: list[int] | None = None, fps: float = 1.0) -> BatchFeature:
        """A batch of one window over ``frames`` (turns 0, 1, ... unless ``turns`` is given)."""
        frames = list(frames)
        turns = list(range(len(frames))) if turns is None else list(turns)
        return self.pad([self.encode(question, frames, turns, fps=fps)])

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"]


StreamProActivationProcessor.register_for_auto_class("AutoProcessor")
