"""StreamingSFTCollator: labels supervise exactly the assistant tokens, inputs decode back to the stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from streampro.dataset_scripts.collator import RecordError, StreamingSFTCollator
from streampro.modeling_streampro.processing_streampro import RESPONSE_TOKEN, SILENCE_TOKEN, turn_time

from streampro.backbones import BACKBONES, build_tiny_backbone
from streampro.video import VideoReadError, encode_video

SIZE = 56  # 56 px frames: the tiny image processor's min_pixels, so a handful of image tokens per frame


def _write_video(path, n_seconds: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 255, size=(n_seconds, 3), dtype=np.uint8)
    # 2 frames per second: the 1-fps sampler takes the frame shown at (k+1) s.
    frames = [np.broadcast_to(colours[min(i // 2, n_seconds - 1)], (SIZE, SIZE, 3)).copy() for i in range(2 * n_seconds)]
    encode_video(path, frames, fps=2)


def make_records(root, specs):
    """specs: list of (num_turns, question_turn, {turn: answer}) → SFT records with videos under root."""
    (root / "videos").mkdir(exist_ok=True)
    records = []
    for i, (n, q, answers) in enumerate(specs):
        video = f"videos/clip{i}.mp4"
        _write_video(root / video, n, seed=i)
        records.append({
            "id": f"clip{i}", "task": "OU", "video": video, "duration": float(n), "fps": 1.0, "num_turns": n,
            "system": None,
            "questions": [{"turn": q, "time": turn_time(q), "text": "Tell me when the screen changes colour."}],
            "responses": [{"turn": k, "time": turn_time(k), "text": t} for k, t in sorted(answers.items())],
        })
    return records


SPECS = [(5, 1, {2: "it turned red", 4: "it turned blue"}), (3, 0, {1: "a green circle appeared"})]


@pytest.fixture(scope="module", params=BACKBONES)
def tiny(request):
    return build_tiny_backbone(request.param, streampro=True)


def test_labels_supervise_exactly_the_assistant_tokens(tiny, tmp_path):
    proc = tiny.processor
    records = make_records(tmp_path, SPECS)
    batch = StreamingSFTCollator(proc, frames_root=tmp_path)(records)
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["mm_token_type_ids"].shape
    assert lengths[0] != lengths[1]  # the shorter stream really is padded
    assert batch["image_grid_thw"].shape[0] == sum(n for n, _, _ in SPECS)
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())
    for i, (n, q, answers) in enumerate(SPECS):
        length = int(lengths[i])
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        assert (labels[length:] == -100).all() and (batch["attention_mask"][i, length:] == 0).all()
        # The supervised tokens, in order, are exactly the assistant turns from the question on:
        # `</Silence>` alone, or `</Response>answer<|im_end|>`.
        expected = "".join(
            f"{RESPONSE_TOKEN}{answers[k]}<|im_end|>" if k in answers else SILENCE_TOKEN for k in range(q, n)
        )
        supervised = labels[labels != -100]
        assert proc.tokenizer.decode(supervised, skip_special_tokens=False) == expected
        assert torch.equal(supervised, ids[:length][labels[:length] != -100])  # labels copy the inputs
        # The inputs decode back to the whole conversation.
        counts = proc.num_image_tokens(proc.process_frames(StreamingSFTCollator(proc, tmp_path).load_frames(records[i]))["image_grid_thw"])
        text = proc.conversation_text(counts, {q: records[i]["questions"][0]["text"]}, answers)
        assert proc.tokenizer.decode(ids[:length], skip_special_tokens=False) == text
        # Every decision token is supervised from the question's turn on, and only there.
        # (The system prompt names the decision tokens too, so count after it.)
        start = len(proc.encode_text(proc.system_text()))
        turns_ids, turns_labels = ids[start:length], labels[start:length]
        decisions = (turns_ids == proc.silence_token_id) | (turns_ids == proc.response_token_id)
        assert int(decisions.sum()) == n and int((turns_labels[decisions] != -100).sum()) == n - q
        assert (turns_labels[decisions][: q] == -100).all()


def test_padding_does_not_change_the_loss(tiny, tmp_path):
    """Right padding is invisible: the batch's per-sample losses equal each sample's alone."""
    records = make_records(tmp_path, SPECS)
    collate = StreamingSFTCollator(tiny.processor, frames_root=tmp_path)
    model = tiny.model

    def sample_losses(batch):
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        lp = torch.log_softmax(logits[:, :-1].float(), -1)
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        nll = -lp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        return nll.sum(1) / mask.sum(1)

    together = sample_losses(collate(records))
    alone = torch.cat([sample_losses(collate([r])) for r in records])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_frame_cache_round_trip(tiny, tmp_path):
    records = make_records(tmp_path, SPECS[:1])
    cache = tmp_path / "cache"
    collate = StreamingSFTCollator(tiny.processor, frames_root=tmp_path, frame_cache_dir=cache)
    first = collate(records)
    assert len(list(cache.glob("*.npz"))) == 1
    second = collate(records)  # read from the cache
    for k in first:
        assert torch.equal(first[k], second[k]), k


def test_bad_records_raise_clear_errors(tiny, tmp_path):
    records = make_records(tmp_path, SPECS[:1])
    collate = StreamingSFTCollator(tiny.processor, frames_root=tmp_path)
    with pytest.raises(VideoReadError, match="missing.mp4 not found"):
        collate([{**records[0], "video": "videos/missing.mp4"}])
    with pytest.raises(RecordError, match="relative; pass frames_root"):
        StreamingSFTCollator(tiny.processor)(records)
    with pytest.raises(VideoReadError, match="gives 5 frames at 1 fps but the record has 9 turns"):
        collate([{**records[0], "num_turns": 9}])
    early = {**records[0], "responses": [{"turn": 0, "time": 1.0, "text": "too early"}]}
    with pytest.raises(RecordError, match="clip0.*before the first question"):
        collate([early])


def test_standby_turns_follow_the_processor(tiny, tmp_path):
    """Three-state: ``standby`` turns are supervised ``</Standby>`` (padded and packed alike); two-state: silent as before."""
    from streampro.modeling_streampro.processing_streampro import STANDBY_TOKEN

    records = make_records(tmp_path, SPECS)
    with_standby = [{**records[0], "standby": [3]}, {**records[1], "standby": [0]}]
    # Two-state: the standby turns are ignored, the batch is exactly that of records without them.
    two = StreamingSFTCollator(tiny.processor, frames_root=tmp_path)
    before, after = two(records), two(with_standby)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Three-state (the same tiny model plus </Standby>).
    three = build_tiny_backbone(tiny.backbone, streampro=True, standby=True).processor
    for pack in (False, True):
        batch = StreamingSFTCollator(three, frames_root=tmp_path, pack=pack)(with_standby)
        supervised = batch["labels"][batch["labels"] != -100]
        expected = (SILENCE_TOKEN + RESPONSE_TOKEN + "it turned red<|im_end|>" + STANDBY_TOKEN + RESPONSE_TOKEN
                    + "it turned blue<|im_end|>" + STANDBY_TOKEN + RESPONSE_TOKEN + "a green circle appeared<|im_end|>"
                    + SILENCE_TOKEN)
        assert three.tokenizer.decode(supervised, skip_special_tokens=False) == expected
    with pytest.raises(RecordError, match="clip0.* no 'standby' turns .*rebuild the records with `streampro data build sft`"):
        StreamingSFTCollator(three, frames_root=tmp_path)(records)
