"""SFT collator: streaming-conversation records → one padded batch of model inputs with labels.

A record is what ``streampro data build sft`` writes (``{id, task, video, duration, fps,
num_turns, system, questions: [{turn, time, text}], responses: [{turn, time, text}]}``). Frames
are decoded lazily here, at training time (one frame per turn at the record's fps, through
:func:`~streampro.dataset_scripts.frames.load_record_frames` and its optional on-disk cache), and
the label logic is the processor's own
:meth:`~streampro.modeling_streampro.processing_streampro.StreamProProcessor.encode_conversation`,
so training sees exactly the token layout the streaming loop produces.

Batch keys: ``input_ids``, ``attention_mask``, ``labels`` (B, L) right-padded (labels -100 on
padding), ``mm_token_type_ids`` (B, L), ``pixel_values`` (sum of patches over the batch, D) and
``image_grid_thw`` (sum of frames, 3), concatenated in batch order (the Qwen-VL convention).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

MODEL_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "pixel_values", "image_grid_thw")


class RecordError(ValueError):
    """An SFT record that cannot be turned into a training example (names the record and the fix)."""


def _record_name(record: dict) -> str:
    return f"record {record.get('id', '<no id>')!r}"


def _turn_texts(record: dict, key: str) -> dict[int, str]:
    """``questions`` / ``responses`` list → {turn: text}, with clear errors for malformed entries."""
    items = record.get(key)
    if not isinstance(items, list):
        raise RecordError(f"{_record_name(record)}: field {key!r} must be a list of {{turn, time, text}}, got {items!r}")
    out: dict[int, str] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "turn" not in item or "text" not in item:
            raise RecordError(f"{_record_name(record)}: {key}[{i}] needs 'turn' and 'text', got {item!r}")
        turn = int(item["turn"])
        if turn in out:
            raise RecordError(f"{_record_name(record)}: two {key} on turn {turn}; merge them into one text")
        out[turn] = str(item["text"])
    return out


class StreamingSFTCollator:
    """Collate SFT records into right-padded model inputs with SFT labels.

    ``frames_root`` is the directory the records' ``video`` paths are relative to (absolute paths
    are used as they are); ``frame_cache_dir`` keeps decoded frames on disk (``.npz``) so later
    epochs skip video decoding; ``max_pixels`` downscales frames before the image processor.
    """

    def __init__(
        self,
        processor,
        frames_root: str | os.PathLike | None = None,
        frame_cache_dir: str | os.PathLike | None = None,
        max_pixels: int | None = None,
        pad_to_multiple_of: int | None = None,
    ):
        self.processor = processor
        self.frames_root = Path(frames_root) if frames_root is not None else None
        self.frame_cache_dir = Path(frame_cache_dir) if frame_cache_dir is not None else None
        self.max_pixels = max_pixels
        self.pad_to_multiple_of = pad_to_multiple_of
        pad = processor.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else processor.end_of_turn_id

    # ---- frames ------------------------------------------------------------------------
    def load_frames(self, record: dict) -> list:
        """One RGB frame per turn of ``record`` (decoded at the record's fps, through the frame cache)."""
        from streampro.dataset_scripts.frames import load_record_frames

        if not record.get("video"):
            raise RecordError(f"{_record_name(record)} has no 'video' path")
        if self.frames_root is None and not Path(record["video"]).is_absolute():
            raise RecordError(
                f"{_record_name(record)}: video {record['video']!r} is relative; pass frames_root "
                "(the dataset directory the paths are relative to)"
            )
        return load_record_frames(record, self.frames_root, self.frame_cache_dir, self.max_pixels)

    # ---- encoding ----------------------------------------------------------------------
    def encode(self, record: dict, frames=None):
        """The processor's :class:`StreamEncoding` of one record (frames loaded if not given)."""
        frames = self.load_frames(record) if frames is None else frames
        try:
            return self.processor.encode_conversation(
                frames,
                _turn_texts(record, "questions"),
                _turn_texts(record, "responses"),
                fps=float(record.get("fps", 1.0)),
                system=record.get("system"),
            )
        except ValueError as e:
            raise RecordError(f"{_record_name(record)}: {e}") from e

    def __call__(self, records: list[dict]) -> dict[str, torch.Tensor]:
        return self.pad([self.encode(r) for r in records])

    def pad(self, encodings: list) -> dict[str, torch.Tensor]:
        """Right-pad a list of encodings into one batch."""
        if not encodings:
            raise ValueError("cannot collate an empty batch")
        length = max(len(e["input_ids"]) for e in encodings)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        b = len(encodings)
        input_ids = torch.full((b, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((b, length), -100, dtype=torch.long)
        attention_mask = torch.zeros((b, length), dtype=torch.long)
        mm_token_type_ids = torch.zeros((b, length), dtype=torch.int)
        for i, e in enumerate(encodings):
            n = len(e["input_ids"])
            input_ids[i, :n] = e["input_ids"]
            labels[i, :n] = e["labels"]
            attention_mask[i, :n] = 1
            mm_token_type_ids[i, :n] = e["mm_token_type_ids"]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "mm_token_type_ids": mm_token_type_ids,
            "pixel_values": torch.cat([e["pixel_values"] for e in encodings]),
            "image_grid_thw": torch.cat([e["image_grid_thw"] for e in encodings]),
        }
