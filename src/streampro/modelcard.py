"""Model cards (the checkpoint's ``README.md``) for StreamPro checkpoints, with ``huggingface_hub.ModelCard``.

One card shape for every checkpoint this package writes: ``streampro convert-backbone`` (stage
``"converted"``), the SFT and GRPO trainers (``"sft"`` / ``"grpo"``, in the output folder and in each
``checkpoint-N``, instead of TRL's generic card) and the embedded tiny model. The metadata says
what the Hub needs to list the model (``pipeline_tag``, ``library_name``, ``base_model``,
``license``, ``datasets``, ``tags``); the text shows ``generate_stream`` and plain ``generate``
and, when known, the StreamPro-F1 table (docs/method.md §3).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

logger = logging.getLogger(__name__)

PIPELINE_TAG = "video-text-to-text"
BACKBONE_NAMES = {"qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}
# docs/method.md §2: the seven tasks of the W-Avg, in table order.
TASK_NAMES = {
    "EU": "Event Understanding",
    "OU": "Object Understanding",
    "AA": "Anomaly Alert",
    "TP": "Temporal Perception",
    "TG": "Temporal Grounding",
    "GP": "Goal Planning",
    "RF": "Risk Forecasting",
}
STAGES = {
    "converted": (
        "a base {backbone} checkpoint converted for StreamPro: the decision tokens `</Silence>` and "
        "`</Response>` are added (their embeddings start from the mean of the existing rows) and the "
        "StreamPro remote code and processor are attached. It is **not trained for streaming yet**: "
        "fine-tune it with `streampro train sft`, then `streampro train grpo` (docs/training.md)."
    ),
    "sft": "{backbone} fine-tuned with StreamPro SFT on streaming conversations (one turn per frame, "
           "CB-Stream / focal / CE loss on the decision tokens).",
    "grpo": "{backbone} trained with StreamPro GRPO (one rollout = one streaming trajectory, rewards on "
            "the timing and the content of the answers) after SFT.",
    "embedded": "the tiny {backbone} model shipped inside the `streampro` package, trained from scratch on "
                "the synthetic StreamPro-Synth clips; it is the offline default of every command.",
}
_HUB_CACHE = re.compile(r"models--([^/]+)--([^/]+)/snapshots/")


def hub_id_from_path(path: str | Path) -> str | None:
    """``…/models--Qwen--Qwen2.5-VL-3B-Instruct/snapshots/<sha>`` → ``Qwen/Qwen2.5-VL-3B-Instruct``."""
    match = _HUB_CACHE.search(Path(path).resolve().as_posix() + "/")
    return f"{match.group(1)}/{match.group(2)}" if match else None


def read_card_data(directory: str | Path) -> dict:
    """The YAML metadata of ``directory/README.md`` (``{}`` when there is no card)."""
    readme = Path(directory) / "README.md"
    if not readme.is_file():
        return {}
    return ModelCard.load(readme).data.to_dict()


def tokens_per_frame(image_processor, width: int, height: int) -> int:
    """Vision tokens one ``width``×``height`` frame becomes after the processor's resize (merged patches)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    factor = image_processor.patch_size * image_processor.merge_size
    h, w = smart_resize(height, width, factor=factor, min_pixels=image_processor.size["shortest_edge"],
                        max_pixels=image_processor.size["longest_edge"])
    return (h // factor) * (w // factor)


def evaluation_table(evaluation: dict) -> str:
    """Markdown table of StreamPro-F1 ×100: ``evaluation = {"w_avg": x, "tasks": {code: f1}, "split": text}``."""
    rows = ["| task | StreamPro-F1 |", "|---|---|"]
    rows += [f"| {TASK_NAMES.get(code, code)} ({code}) | {f1:.1f} |" for code, f1 in evaluation.get("tasks", {}).items()]
    rows.append(f"| **W-Avg** | **{evaluation['w_avg']:.1f}** |")
    split = evaluation.get("split", "")
    return (f"{split}\n\n" if split else "") + "\n".join(rows)


def streampro_model_card(
    *,
    model_name: str,
    backbone: str,
    stage: str,
    repo_id: str | None = None,
    base_model: str | list[str] | None = None,
    license: str = "apache-2.0",
    license_name: str | None = None,
    license_link: str | None = None,
    datasets: list[str] | None = None,
    tags: list[str] | tuple[str, ...] = (),
    training: str | None = None,
    frames: str | None = None,
    evaluation: dict | None = None,
    three_state: bool = False,
) -> ModelCard:
    """The card of one StreamPro checkpoint.

    ``stage`` is one of ``STAGES``; ``repo_id`` is the Hub id the examples load (default
    ``<org>/<model_name>``, filled in after ``hf upload``); ``training`` / ``frames`` are one-line
    notes (how it was trained, the per-frame resolution); ``evaluation`` adds the F1 table;
    ``three_state``: the checkpoint has ``</Standby>`` (docs/engine.md, "Three states (Streamo)").
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {sorted(STAGES)}, got {stage!r}")
    backbone_name = BACKBONE_NAMES.get(backbone, backbone)
    data = ModelCardData(
        pipeline_tag=PIPELINE_TAG,
        library_name="transformers",
        base_model=base_model,
        license=license,
        license_name=license_name,
        license_link=license_link,
        datasets=datasets or None,
        tags=sorted({"streampro", "streaming", "video", "custom_code", backbone, *tags,
                     *(("three-state",) if three_state else ())}),
        model_name=model_name,
    )
    repo = repo_id or f"<org>/{model_name}"
    lines = [
        f"# {model_name}",
        "",
        f"StreamPro model: {STAGES[stage].format(backbone=backbone_name)}",
        "",
        "StreamPro watches a video one frame per second. After every frame it decides: `</Silence>` "
        "(keep watching) or `</Response>` followed by the answer, as soon as the video shows enough "
        "to answer the question. The weights have the layout of transformers' "
        f"{backbone_name} class; the streaming loop ships as remote code (`trust_remote_code=True`).",
        "",
        *([
            "**Three-state checkpoint** (Streamo-style): a third decision, `</Standby>`, says the event asked "
            "about is under way but not over yet; the turn closes without output, like a silent one "
            '(`event.decision == "standby"`), and `p_response` is renormalised over the three decision tokens.',
            "",
        ] if three_state else []),
        "## Streaming",
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "from streampro.video import iter_video_frames  # the streampro package; or pass any list of 1-fps PIL frames",
        "",
        f'model = AutoModelForImageTextToText.from_pretrained("{repo}", trust_remote_code=True)',
        f'processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)',
        'frames = iter_video_frames("clip.mp4", fps=1)  # (time, frame) pairs',
        'for event in model.generate_stream(frames, "Tell me when the red square turns blue.", processor=processor):',
        '    if event.decision == "response":',
        '        print(f"{event.time:g} s: {event.text}")',
        "```",
        "",
        f"or from the command line, on a local copy (`hf download {repo} --local-dir {model_name}`): "
        f"`streampro stream clip.mp4 --question \"...\" --model {model_name}`.",
        "",
        "## Plain image / video questions",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'pipe = pipeline("image-text-to-text", model="{repo}", trust_remote_code=True)',
        'messages = [{"role": "user", "content": [{"type": "image", "image": "frame.jpg"},',
        '                                         {"type": "text", "text": "What is on the screen?"}]}]',
        "print(pipe(text=messages, max_new_tokens=32))",
        "```",
        "",
        "`model.generate(**processor(images=..., text=...))` works as for the backbone; a clip passed "
        "as `processor(videos=[frames], text=\"...<|video_pad|>...\")` is written as time-tagged frames, "
        "the way the model sees a stream.",
    ]
    if frames:
        lines += ["", "## Frames", "", frames]
    if training:
        lines += ["", "## Training", "", training]
    if evaluation:
        lines += ["", "## Evaluation", "", evaluation_table(evaluation)]
    lines += [
        "",
        "## Publish",
        "",
        "```bash",
        f"hf upload {repo} path/to/{model_name}",
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def write_model_card(directory: str | Path, **kwargs) -> Path:
    """Write :func:`streampro_model_card` ``(**kwargs)`` to ``directory/README.md``; returns its path."""
    path = Path(directory) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    streampro_model_card(**kwargs).save(path)
    return path


def frames_note(image_processor, backbone: str) -> str:
    """One line on the per-frame pixel budget and what a 720p frame costs in tokens."""
    max_pixels = image_processor.size["longest_edge"]
    side = int(max_pixels ** 0.5)
    square = f" ({side}×{side})" if side * side == max_pixels else ""
    return (
        f"Frames are resized to at most {max_pixels:,} pixels{square}: a 1280×720 frame becomes "
        f"{tokens_per_frame(image_processor, 1280, 720)} vision tokens per turn on this {BACKBONE_NAMES.get(backbone, backbone)} "
        "backbone (docs/engine.md, \"Frame resolution\")."
    )


def trained_model_card(model, processor, *, stage: str, model_name: str, repo_id: str | None = None,
                       dataset_name: str | list[str] | None = None, tags=(), training: str | None = None) -> ModelCard:
    """The card of a model trained from a StreamPro checkpoint (SFT / GRPO output or checkpoint).

    The base model, licence and datasets come from the card of the checkpoint training started
    from (``model.config._name_or_path``), or that id itself when it is a Hub id.
    """
    source = model.config._name_or_path or ""
    parent = read_card_data(source) if source and Path(source).is_dir() else {}
    if parent:
        base_model = parent.get("base_model")
    elif source and not Path(source).exists() and "/" in source:
        base_model = source
    else:
        base_model = None
    datasets = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or parent.get("datasets") or [])
    return streampro_model_card(
        model_name=model_name,
        backbone=model.config.backbone,
        stage=stage,
        repo_id=repo_id,
        base_model=base_model,
        license=parent.get("license", "apache-2.0"),
        license_name=parent.get("license_name"),
        license_link=parent.get("license_link"),
        datasets=datasets,
        tags=("trl", stage, *tags),
        training=training,
        frames=frames_note(processor.image_processor, model.config.backbone) if processor is not None else None,
        three_state=getattr(model.config, "standby_token_id", None) is not None,
    )


def write_embedded_card(model_dir: str | Path, model, processor, provenance: dict, tasks: dict[str, float]) -> Path:
    """The card of the embedded tiny model (``streampro reproduce --install-assets``).

    ``provenance`` is its ``PROVENANCE.json``; ``tasks`` the test F1 ×100 per task code.
    """
    return write_model_card(
        model_dir,
        model_name="streampro-tiny-synth",
        backbone=model.config.backbone,
        stage="embedded",
        license="apache-2.0",
        tags=("synthetic", "tiny"),
        frames=frames_note(processor.image_processor, model.config.backbone),
        training=(f"{provenance['source']}: `{provenance['recipe']}`, seed {provenance['settings']['seed']}, "
                  f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {str(model.dtype).removeprefix('torch.')}. "
                  "`PROVENANCE.json` beside the weights records the recipe settings and the validation W-Avg "
                  "of the five candidates; docs/reproduce.md shows how to rebuild it "
                  "(`streampro reproduce --seed 2 --install-assets`)."),
        evaluation={"w_avg": provenance["test_w_avg_f1"], "tasks": tasks,
                    "split": "StreamPro-Synth **test** split (20 clips per task), exact judge, StreamPro-F1 ×100 "
                             "(docs/metric.md), read after the model was chosen on validation; the control task "
                             "is scored apart."},
    )


def write_trainer_card(trainer, stage: str, output_dir: str | None = None, dataset_name=None, tags=None) -> Path | None:
    """Write the card of a StreamPro SFT / GRPO ``trainer``'s model to ``output_dir`` (default ``args.output_dir``).

    Called by the trainers' ``create_model_card`` (TRL writes its generic card there before each
    checkpoint) and ``save_model`` (each ``checkpoint-N`` and the final folder). Main process only.
    """
    import trl

    if not trainer.is_world_process_zero():
        return None
    args = trainer.args
    model = trainer.accelerator.unwrap_model(trainer.model)
    name = args.hub_model_id.split("/")[-1] if args.hub_model_id else Path(args.output_dir).resolve().name
    loss = f", loss `{args.loss_type}`" if stage == "sft" else ""
    training = (
        f"`streampro train {stage}` (TRL {trl.__version__}{loss}): {trainer.state.global_step} optimiser steps, "
        f"learning rate {args.learning_rate:g}, {args.per_device_train_batch_size} per device × "
        f"{args.gradient_accumulation_steps} accumulation steps. See docs/training.md."
    )
    card = trained_model_card(model, trainer.processing_class, stage=stage, model_name=name, repo_id=args.hub_model_id,
                              dataset_name=dataset_name, tags=[tags] if isinstance(tags, str) else list(tags or ()),
                              training=training)
    path = Path(output_dir or args.output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    card.save(path)
    return path


__all__ = [
    "PIPELINE_TAG",
    "hub_id_from_path",
    "read_card_data",
    "streampro_model_card",
    "tokens_per_frame",
    "write_embedded_card",
    "trained_model_card",
    "write_model_card",
    "write_trainer_card",
]
