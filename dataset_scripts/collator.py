"""SFT collator: streaming-conversation records → one padded batch of model inputs with labels.

A record is what ``streampro data build sft`` writes (``{id, task, video, duration, fps,
num_turns, system, questions: [{turn, time, text}], responses: [{turn, time, text}], standby: [turn, ...]}``). Frames
are decoded lazily here, at training time (one frame per turn at the record's fps, through
:func:`~streampro.dataset_scripts.frames.load_record_frames` and its optional on-disk cache), and
the label logic is the processor's own
:meth:`~streampro.modeling_streampro.processing_streampro.StreamProProcessor.encode_conversation`,
so training sees exactly the token layout the streaming loop produces.

Batch keys: ``input_ids``, ``attention_mask``, ``labels`` (B, L) right-padded (labels -100 on
padding), ``mm_token_type_ids`` (B, L), ``pixel_values`` (sum of patches over the batch, D) and
``image_grid_thw`` (sum of frames, 3), concatenated in batch order (the Qwen-VL convention).

Three states (docs/data.md §3): with a processor whose tokenizer has ``</Standby>``
(``processor.standby_token_id`` set) the record's ``standby`` turns are closed with ``</Standby>``
and supervised; a record without ``standby`` is refused (it predates the labels: rebuild it). A
two-state processor ignores them: they stay silent turns, exactly as before.

Training windows: a record with ``window = {"turns", "label_from"}`` (``streampro data build sft
--window-turns``) is encoded as the engine's context after a slide — only those turns, labels from
``label_from`` on (docs/training.md, "Training windows").

Packing (``pack=True``, docs/training.md, "Packing"): the micro-batch's streams are concatenated
into one row (1, ΣL) with no padding and no ``attention_mask``; ``position_ids`` (4, 1, ΣL) holds
each stream's own positions — row 0 the text positions 0..L_i−1 restarting at every stream, rows
1–3 its M-RoPE positions (:func:`mrope_position_ids`). transformers' Qwen-VL text models read row
0 as packed-sequence boundaries (a block-diagonal causal mask, FlashAttention's varlen kernel; the
trainer's ``pack_streams`` runs SDPA stream by stream). Nothing crosses a stream boundary, so the
loss and its gradients equal the padded batch's (tested).

Token budgets (:class:`TokenBudgetBatchSampler`): micro-batches filled up to a number of tokens,
from per-record lengths that :meth:`StreamingSFTCollator.record_length` bounds without decoding.
"""

from __future__ import annotations

import bisect
import logging
import os
import random
from collections.abc import Sequence
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


def _window(record: dict) -> tuple[list[int] | None, int]:
    """A record's training window ``(turns, label_from)``, or ``(None, 0)`` for a whole stream."""
    window = record.get("window")
    if window is None:
        return None, 0
    if not isinstance(window, dict) or not isinstance(window.get("turns"), list) or "label_from" not in window:
        raise RecordError(
            f"{_record_name(record)}: field 'window' must be null or {{turns: [int, ...], label_from: int}}, "
            f"got {window!r}; rebuild it with `streampro data build sft --window-turns W`"
        )
    return [int(k) for k in window["turns"]], int(window["label_from"])


def standby_argument(record: dict, processor) -> dict:
    """``{"standby": [turn, ...]}`` for a three-state processor, ``{}`` for a two-state one (the turns stay silent).

    A record without its ``standby`` turns under a three-state processor is a :class:`RecordError`.
    """
    if getattr(processor, "standby_token_id", None) is None:
        return {}
    turns = record.get("standby")
    if turns is None:
        raise RecordError(
            f"{_record_name(record)} has no 'standby' turns but the model is three-state (its tokenizer has "
            "</Standby>); rebuild the records with `streampro data build sft` (or `streampro data synth`)"
        )
    if not isinstance(turns, list):
        raise RecordError(f"{_record_name(record)}: field 'standby' must be a list of turn indices, got {turns!r}")
    return {"standby": [int(k) for k in turns]}


def mrope_position_ids(input_ids: torch.Tensor, image_grid_thw: torch.Tensor, image_token_id: int,
                       merge_size: int) -> torch.Tensor:
    """(3, L) M-RoPE positions of one stream, as Qwen-VL's ``get_rope_index`` computes them for images.

    Text advances all three axes by one per token; a frame whose merged token grid is (h, w),
    starting at s, takes (s, s + row, s + col), and the text after it starts at s + max(h, w)
    (the streaming engine's rule too, docs/engine.md). Tested against ``get_rope_index``.
    """
    is_image = (input_ids == image_token_id).to(torch.int8)
    edges = torch.diff(is_image, prepend=is_image.new_zeros(1), append=is_image.new_zeros(1))
    starts, ends = (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()
    if len(starts) != len(image_grid_thw):
        raise ValueError(f"{len(starts)} image-token runs but {len(image_grid_thw)} frames")
    positions = torch.empty(3, len(input_ids), dtype=torch.long)
    pos = done = 0
    for start, end, (t, h, w) in zip(starts, ends, image_grid_thw.tolist()):
        gh, gw = h // merge_size, w // merge_size
        if t != 1 or gh * gw != end - start:
            raise ValueError(f"frame grid {(t, h, w)} does not match its {end - start} image tokens")
        positions[:, done:start] = torch.arange(pos, pos + start - done)
        pos += start - done
        positions[0, start:end] = pos
        positions[1, start:end] = pos + torch.arange(gh).repeat_interleave(gw)
        positions[2, start:end] = pos + torch.arange(gw).repeat(gh)
        pos, done = pos + max(gh, gw), end
    positions[:, done:] = torch.arange(pos, pos + len(input_ids) - done)
    return positions


def frame_token_bound(processor, max_pixels: int | None = None) -> int:
    """Image tokens of one frame at most: the pixel cap (``max_pixels`` and the image processor's
    ``longest_edge``) over the pixels of one merged token, ``(patch · merge)²``."""
    ip = processor.image_processor
    cap = ip.size["longest_edge"] if max_pixels is None else min(int(max_pixels), ip.size["longest_edge"])
    return max(1, max(cap, ip.size["shortest_edge"]) // (ip.patch_size * ip.merge_size) ** 2)


class StreamingSFTCollator:
    """Collate SFT records into right-padded (or packed) model inputs with SFT labels.

    ``frames_root`` is the directory the records' ``video`` paths are relative to (absolute paths
    are used as they are); ``frame_cache_dir`` keeps decoded frames on disk (``.npz``) so later
    epochs skip video decoding; ``max_pixels`` downscales frames before the image processor;
    ``pack`` concatenates the micro-batch's streams into one row (module docstring).
    """

    def __init__(
        self,
        processor,
        frames_root: str | os.PathLike | None = None,
        frame_cache_dir: str | os.PathLike | None = None,
        max_pixels: int | None = None,
        pad_to_multiple_of: int | None = None,
        pack: bool = False,
    ):
        self.processor = processor
        self.pack = pack
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
        turns, label_from = _window(record)
        standby = standby_argument(record, self.processor)
        frames = self.load_frames(record) if frames is None else frames
        try:
            return self.processor.encode_conversation(
                frames,
                _turn_texts(record, "questions"),
                _turn_texts(record, "responses"),
                fps=float(record.get("fps", 1.0)),
                system=record.get("system"),
                turns=turns,
                label_from=label_from,
                **standby,
            )
        except ValueError as e:
            raise RecordError(f"{_record_name(record)}: {e}") from e

    def __call__(self, records: list[dict]) -> dict[str, torch.Tensor]:
        encodings = [self.encode(r) for r in records]
        return self.packed(encodings) if self.pack else self.pad(encodings)

    def record_length(self, record: dict, frame_tokens: int) -> int:
        """Tokens of ``record``'s encoding, without decoding its video, when every frame has ``frame_tokens``
        image tokens (:func:`frame_token_bound` caps it): exact then, otherwise an upper bound as long as
        frames have at most ``frame_tokens`` (time tags are counted at the last turn's, the longest)."""
        proc = self.processor
        turns, _ = _window(record)
        n = len(turns) if turns is not None else int(record["num_turns"])
        last = (max(turns) if turns else int(record["num_turns"]) - 1) if n else 0
        fps = float(record.get("fps", 1.0))
        per_turn = len(proc.encode_text(proc.user_text(last, fps, 0))) + frame_tokens
        per_turn += 2 + len(proc.newline_ids)  # decision token, <|im_end|>, newline
        texts = [q["text"] for q in record["questions"]] + [r["text"] for r in record["responses"]]
        text_tokens = sum(len(t) for t in proc.tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0
        return len(proc.encode_text(proc.system_text(record.get("system")))) + n * per_turn + text_tokens

    def packed(self, encodings: list) -> dict[str, torch.Tensor]:
        """Concatenate encodings into one row with per-stream positions and no padding (module docstring)."""
        if not encodings:
            raise ValueError("cannot collate an empty batch")
        merge = self.processor.image_processor.merge_size
        image_id = self.processor.image_token_id
        text_positions, rope_positions = [], []
        for e in encodings:
            n = len(e["input_ids"])
            text_positions.append(torch.arange(n))
            rope_positions.append(mrope_position_ids(e["input_ids"], e["image_grid_thw"], image_id, merge))
        position_ids = torch.cat([torch.cat(text_positions)[None], torch.cat(rope_positions, dim=1)])
        return {
            "input_ids": torch.cat([e["input_ids"] for e in encodings])[None],
            "labels": torch.cat([e["labels"] for e in encodings])[None],
            "mm_token_type_ids": torch.cat([e["mm_token_type_ids"] for e in encodings])[None].int(),
            "position_ids": position_ids[:, None, :],  # (4, 1, ΣL)
            "pixel_values": torch.cat([e["pixel_values"] for e in encodings]),
            "image_grid_thw": torch.cat([e["image_grid_thw"] for e in encodings]),
        }

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


class TokenBudgetBatchSampler:
    """Micro-batches of record indices filled up to ``max_tokens`` tokens; every record once per epoch.

    ``lengths[i]`` is record i's token count (:meth:`StreamingSFTCollator.record_length`). A
    micro-batch costs the sum of its lengths when packed, its size × its longest length when
    padded. Records are ordered by a seeded shuffle, split into buckets of ``bucket_size``
    records (default: all of them), sorted by length within a bucket (longest first) and filled
    greedily (:meth:`_fill`); a record longer than the budget gets a micro-batch of its own
    (counted in ``oversized``). The micro-batches are fixed once, so every epoch has the same number of them
    (the Trainer counts steps from it); each epoch visits them in a new order (``set_epoch``).
    Sorting changes which records share a micro-batch, never which records are trained on.
    """

    batch_size = None  # variable-size batches (accelerate's BatchSamplerShard handles them)
    drop_last = False

    def __init__(self, lengths: Sequence[int], max_tokens: int, *, packed: bool = True, shuffle: bool = True,
                 seed: int = 0, bucket_size: int | None = None):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.lengths = [int(n) for n in lengths]
        self.max_tokens, self.packed, self.shuffle, self.seed = int(max_tokens), packed, shuffle, seed
        self.epoch = 0
        order = list(range(len(self.lengths)))
        if shuffle:
            random.Random(seed).shuffle(order)
        size = bucket_size or max(1, len(order))
        self.batches: list[list[int]] = []
        self.oversized = 0
        for lo in range(0, len(order), size):
            bucket = sorted(order[lo:lo + size], key=lambda i: -self.lengths[i])
            self._fill(bucket)

    def _cost(self, batch: list[int], extra: int) -> int:
        if self.packed:
            return sum(self.lengths[i] for i in batch) + self.lengths[extra]
        return (len(batch) + 1) * max([self.lengths[i] for i in batch] + [self.lengths[extra]])

    def _fill(self, bucket: list[int]) -> None:
        """``bucket`` sorted longest first. Padded: consecutive records (similar lengths, little padding).
        Packed: the longest record left, then repeatedly the longest one that still fits (best fit; ~99 %
        full on uniform lengths, O(n²) list moves: ~20 s for 500,000 records in one bucket)."""
        if not self.packed:
            lo = 0
            while lo < len(bucket):
                batch = [bucket[lo]]
                self.oversized += self.lengths[bucket[lo]] > self.max_tokens
                lo += 1
                while lo < len(bucket) and self._cost(batch, bucket[lo]) <= self.max_tokens:
                    batch.append(bucket[lo])
                    lo += 1
                self.batches.append(batch)
            return
        items = bucket[::-1]  # ascending lengths
        keys = [self.lengths[i] for i in items]
        while items:
            first = items.pop()
            room = self.max_tokens - keys.pop()
            self.oversized += room < 0
            batch = [first]
            while items:
                j = bisect.bisect_right(keys, room) - 1
                if j < 0:
                    break
                room -= keys.pop(j)
                batch.append(items.pop(j))
            self.batches.append(batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        order = list(range(len(self.batches)))
        if self.shuffle:
            random.Random(self.seed + 1 + self.epoch).shuffle(order)
        for j in order:
            yield list(self.batches[j])
