"""Offline backbones: a tiny Qwen-VL tokenizer/model built in-process, and decision-token surgery.

Nothing here touches the Hub. Tests, benchmarks, docs and the synthetic demo all build their
models with :func:`build_tiny_backbone`, which uses the real transformers classes
(``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration``) with shrunken
configs, a byte-level BPE tokenizer trained on a fixed built-in corpus (so it is identical on
every machine) and the PIL image processor (no torchvision needed).

:func:`add_decision_tokens` is the same operation for a real Qwen-VL tokenizer + model: add
``</Silence>`` / ``</Response>`` as special tokens, resize the embeddings and initialise the new
rows sensibly (mean of existing rows plus a small deterministic perturbation) so a converted
checkpoint starts from the base model's behaviour. :func:`add_standby_token` adds the optional
third decision, ``</Standby>``, the same way (a three-state checkpoint, docs/engine.md "Three states").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessorPil

from streampro.modeling_streampro.processing_streampro import (
    CHAT_TEMPLATE,
    DECISION_TOKENS,
    QWEN_SPECIAL_TOKENS,
    RESPONSE_TOKEN,
    SILENCE_TOKEN,
    STANDBY_TOKEN,
    StreamProProcessor,
)

logger = logging.getLogger(__name__)

BACKBONES = ("qwen2_5_vl", "qwen3_vl")

# A fixed corpus so the BPE merges (and therefore every token id) are identical on every
# machine. It covers the prompt wording, time tags, digits, colours/shapes of StreamPro-Synth
# and common English, so typical strings tokenise into few pieces.
_CORPUS = """
You are StreamPro, a proactive streaming video assistant. You watch a live video one frame per
second. After each frame, answer with a decision. Respond only when the event has fully
concluded or the information is sufficient. Never give partial or speculative answers.
Every answer begins with the response token; otherwise stay silent.
What happens next? Tell me when the event ends. When does the ball hit the wall? Warn me before
the collision. Describe each step as it finishes. What is the next step? Tell me when something
unusual happens. What happened after the square appeared? When did the circle move?
the a an and or of to in on at is are was were it this that with for from by as be has have
red green blue yellow white black orange purple pink gray cyan magenta brown
square circle triangle ball block bar star ring cross box wall line object shape screen
appears appeared disappears disappeared changes changed turned turns moves moved stops stopped
grows shrinks flashes flashed falls fell hits hit collides collision warning hazard danger
left right up down top bottom center middle next step place put stack remove open close
start end start: end: from to seconds second s - : 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17
18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 45 50 60 90 100 120
<0s-1s> <1s-2s> <2s-3s> <10s-11s> <12.5s-18s> 00:12-00:18 12.5s - 18s Wait Yes No yes no
The person picks up the cup. A man is cooking. Add the salt. Cut the onion. Stir the pot.
Careful, there is a step ahead. Stop, the light is red. Obstacle on your path. Fire! A fall.
"""

# Version 2 adds the chat template's role names and StreamPro-Synth's questions and answers, so that their
# words are whole tokens, as in a real Qwen tokenizer (v1 split `green`, `yellow` and `user` into pieces).
_SYNTH_CORPUS = 8 * "user\nassistant\nsystem\n" + """
Describe each step the shape takes as soon as the step is finished. Tell me what the shapes do.
Describe the shapes you see. a big red triangle top left, a small blue circle middle centre, bottom right
the red square moved right. the blue circle grew. the green triangle shrank. the yellow square moved up.
What happens after the red circle moved down? Tell me when the triangle changes colour.
the green square turned yellow. a blue triangle appeared. Tell me when a new shape appears.
Alert me if anything unusual happens. alert: a fire started. alert: an object fell.
When is the yellow circle on screen? Tell me its start and end time as soon as it disappears.
Goal: stack the blocks red, then green, then blue, then yellow, bottom to top. Each time a block is placed,
tell me the next step. next: place the blue block. done: the tower is complete.
I am the white ball walking right. Warn me 3 seconds before I run into anything.
warning: wall ahead, stop. warning: hole ahead, stop. Tell me when the screen changes colour. the screen turned red.
"""
# Qwen2's pre-tokenizer pattern: numbers split into single digits, so `13` in a time tag and in an
# answer are the same tokens (v1 made `13` one token after a space and two after `-`).
_QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
# version -> (corpus, vocabulary size before the special tokens, Qwen2 digit splitting)
TINY_TOKENIZERS = {"v1": (_CORPUS, 640, False), "v2": (_CORPUS + _SYNTH_CORPUS, 768, True)}
TINY_TOKENIZER = "v2"  # what new tiny backbones get; checkpoints keep the tokenizer they were built with

# Shrunken sizes, commented: every number is the smallest that keeps the real code paths.
TINY_SIZES = {
    "text_hidden": 64,  # hidden size of the language model
    "text_layers": 2,  # decoder layers
    "text_heads": 4,  # head_dim 16 -> mrope_section must sum to 8
    "text_kv_heads": 2,  # exercises grouped-query attention like the real models
    "text_intermediate": 128,
    "vision_hidden": 32,
    "vision_depth": 2,
    "vision_heads": 2,
    "vision_intermediate": 64,
}


def build_tiny_tokenizer(decision_tokens: bool = True, version: str = TINY_TOKENIZER) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the Qwen special tokens, the decision tokens and a chat template.

    ``decision_tokens=False`` mimics a base Qwen-VL tokenizer (for testing checkpoint conversion);
    ``version`` picks one of ``TINY_TOKENIZERS`` (``"v1"`` rebuilds the tokenizer of older models).
    """
    if version not in TINY_TOKENIZERS:
        raise ValueError(f"unknown tiny tokenizer version {version!r}; choose one of {sorted(TINY_TOKENIZERS)}")
    corpus, vocab_size, qwen_digits = TINY_TOKENIZERS[version]
    tok = Tokenizer(models.BPE())
    if qwen_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator([corpus] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=1_000_000,
    )
    specials = list(QWEN_SPECIAL_TOKENS) + (list(DECISION_TOKENS) if decision_tokens else [])
    fast.add_special_tokens({"additional_special_tokens": specials})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_image_processor(backbone: str, min_pixels: int = 56 * 56, max_pixels: int = 112 * 112):
    """The PIL Qwen image processor (works without torchvision) with the backbone's patch size."""
    _check_backbone(backbone)
    patch = 14 if backbone == "qwen2_5_vl" else 16
    # Qwen3-VL normalises with 0.5 mean/std; Qwen2.5-VL with the CLIP statistics (processor default).
    extra = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]} if backbone == "qwen3_vl" else {}
    return Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        **extra,
    )


def _check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")


def tiny_config(backbone: str, tokenizer: PreTrainedTokenizerFast, **sizes):
    """A real ``Qwen2_5_VLConfig`` / ``Qwen3VLConfig`` shrunken to ``TINY_SIZES`` (overridable)."""
    _check_backbone(backbone)
    s = {**TINY_SIZES, **sizes}
    unknown = set(sizes) - set(TINY_SIZES)
    if unknown:
        raise ValueError(f"unknown size keys {sorted(unknown)}; valid: {sorted(TINY_SIZES)}")
    head_dim = s["text_hidden"] // s["text_heads"]
    half = head_dim // 2
    # mrope_section splits head_dim/2 rotary frequencies over (time, height, width).
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in QWEN_SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=s["text_hidden"],
        intermediate_size=s["text_intermediate"],
        num_hidden_layers=s["text_layers"],
        num_attention_heads=s["text_heads"],
        num_key_value_heads=s["text_kv_heads"],
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    top = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    vision = dict(
        depth=s["vision_depth"],
        hidden_size=s["vision_hidden"],
        intermediate_size=s["vision_intermediate"],
        num_heads=s["vision_heads"],
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=s["text_hidden"],
    )
    if backbone == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope}
        vision.update(
            patch_size=14,
            window_size=56,  # 2x2 merged patches per attention window at 14 px patches
            fullatt_block_indexes=[s["vision_depth"] - 1],
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **top)
    from transformers import Qwen3VLConfig

    text["head_dim"] = head_dim
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_section": mrope,
        "mrope_interleaved": True,
    }
    vision.update(
        patch_size=16,
        num_position_embeddings=64,  # must be a perfect square (8x8 learned grid)
        deepstack_visual_indexes=[0],  # must be < depth
    )
    return Qwen3VLConfig(text_config=text, vision_config=vision, **top)


def _base_model_class(backbone: str):
    if backbone == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration


@dataclass
class TinyBackbone:
    model: torch.nn.Module
    processor: StreamProProcessor
    backbone: str


def build_tiny_backbone(
    backbone: str = "qwen2_5_vl",
    seed: int = 0,
    *,
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
    streampro: bool = False,
    tokenizer_version: str = TINY_TOKENIZER,
    standby: bool = False,
    **sizes,
) -> TinyBackbone:
    """Build a tiny, randomly initialised Qwen-VL model and its StreamPro processor, deterministically.

    ``streampro=False`` returns transformers' own ``*ForConditionalGeneration`` (a "base
    checkpoint"); ``streampro=True`` returns ``StreamProForConditionalGeneration`` with the
    same weights. Same ``seed``, sizes and ``tokenizer_version`` → identical weights and token ids.
    ``standby=True`` makes it three-state: :func:`add_standby_token` on the two-state model (the
    weights and token ids of the two-state build, plus one row for ``</Standby>``).
    """
    _check_backbone(backbone)
    tokenizer = build_tiny_tokenizer(version=tokenizer_version)
    config = tiny_config(backbone, tokenizer, **sizes)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if streampro:
            from streampro.modeling_streampro.configuration_streampro import StreamProConfig
            from streampro.modeling_streampro.modeling_streampro import StreamProForConditionalGeneration

            model = StreamProForConditionalGeneration(StreamProConfig.from_backbone_config(config, tokenizer))
        else:
            model = _base_model_class(backbone)(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    if standby:
        add_standby_token(tokenizer, model, seed=seed)
    processor = StreamProProcessor(
        image_processor=build_image_processor(backbone, min_pixels, max_pixels), tokenizer=tokenizer
    )
    return TinyBackbone(model=model, processor=processor, backbone=backbone)


def add_decision_tokens(tokenizer, model=None, *, seed: int = 0) -> list[int]:
    """Add ``</Silence>`` / ``</Response>`` to a (real) Qwen-VL tokenizer and resize ``model``'s embeddings.

    New input/output embedding rows start at the mean of the existing rows plus noise of 1 % of
    their standard deviation (deterministic by ``seed``), the usual choice that keeps the
    model's initial predictions close to the base model's. Tokens already present are left
    alone. Returns the ids of the decision tokens.
    """
    missing = [t for t in DECISION_TOKENS if t not in tokenizer.get_vocab()]
    ids = _add_special_tokens(tokenizer, model, list(DECISION_TOKENS), missing, seed)
    if missing:
        logger.info("added decision tokens %s with ids %s", missing, tokenizer.convert_tokens_to_ids(missing))
    return ids


def add_standby_token(tokenizer, model=None, *, seed: int = 0) -> int:
    """Make a two-state checkpoint three-state: add ``</Standby>`` (docs/engine.md "Three states").

    The new embedding rows are initialised as in :func:`add_decision_tokens`; ``model.config``
    (a ``StreamProConfig``, or a base config that takes the attribute) gets ``standby_token_id``.
    The decision tokens must be there already. A no-op returning the id when the token exists.
    """
    vocab = tokenizer.get_vocab()
    absent = [t for t in DECISION_TOKENS if t not in vocab]
    if absent:
        raise ValueError(f"tokenizer lacks the decision tokens {absent}; add them first with add_decision_tokens")
    missing = [] if STANDBY_TOKEN in vocab else [STANDBY_TOKEN]
    (token_id,) = _add_special_tokens(tokenizer, model, [STANDBY_TOKEN], missing, seed)
    if model is not None:
        model.config.standby_token_id = token_id
    if missing:
        logger.info("added %s with id %d", STANDBY_TOKEN, token_id)
    return token_id


def _add_special_tokens(tokenizer, model, tokens: list[str], missing: list[str], seed: int) -> list[int]:
    """Add ``missing`` (a subset of ``tokens``) as special tokens; new embedding rows = mean + 1 % noise."""
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if model is None or not missing:
        return ids
    old_in = model.get_input_embeddings().weight
    old_rows = old_in.shape[0]
    needed = max(ids) + 1
    if needed > old_rows:
        model.resize_token_embeddings(needed, mean_resizing=False)
    gen = torch.Generator().manual_seed(seed)
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in missing]
    with torch.no_grad():
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            if emb is None:
                continue
            w = emb.weight
            base = w[: min(old_rows, w.shape[0])].float()
            mean, std = base.mean(0), base.std(0)
            for i in new_ids:
                noise = torch.randn(w.shape[1], generator=gen) * std * 0.01
                w[i] = (mean + noise).to(w.dtype)
    return ids


__all__ = [
    "BACKBONES",
    "RESPONSE_TOKEN",
    "TINY_TOKENIZER",
    "TINY_TOKENIZERS",
    "SILENCE_TOKEN",
    "STANDBY_TOKEN",
    "TinyBackbone",
    "add_decision_tokens",
    "add_standby_token",
    "build_image_processor",
    "build_tiny_backbone",
    "build_tiny_tokenizer",
    "tiny_config",
]
