"""The stages of ``streampro reproduce``, each skipped when its output exists, and the process pool.

1. ``data``: StreamPro-Synth (``streampro data synth``), its control task and scene / motion captions.
2. ``init``: one tiny, randomly initialised Qwen2.5-VL StreamPro model shared by every loss, so that
   only the loss differs; its image features centred, its system prompt short.
3. ``captions``, ``control-first``: CE on captions so the language model reads the frames, then a
   warm-up on the control task alone; every loss starts from there.
4. ``sft-ce``, ``sft-focal``, ``sft-cb_stream``: SFT with the same data order, steps, batch, learning
   rate and seed (``streampro train sft`` code path, docs/method.md §4).
5. ``grpo`` from ``sft-cb_stream`` (the paper's recipe) and ``grpo-best`` from the SFT model with the
   best VALIDATION W-Avg (docs/method.md §5), offline rewards; none when ``grpo_steps`` is 0.
6. ``eval``: ``streampro evaluate`` (exact judge) of every model on test, on test with frames shuffled
   in time, and on validation.

A half-trained SFT / GRPO stage resumes from its last Trainer checkpoint. The CPU speed-ups of
:mod:`streampro.cpu_speedups` (numerically equivalent) are applied to the training models.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from streampro.dataset_scripts.manifest import remove_stale_temporaries, write_text_atomic
from streampro.jsonl import read_jsonl, write_jsonl
from streampro.reproduce.recipe import Recipe
from streampro.reproduce.run import LOSSES, SFT_MODELS, TRAINED_MARK, Run, is_model, is_trained

logger = logging.getLogger(__name__)

RL_TASKS = ("EU", "OU", "AA", "TP", "TG", "GP")  # the paper's RL tasks (no RF)
SHUFFLE_SEED = 0
SHORT_SYSTEM_PROMPT = ("You are StreamPro. After each frame answer </Silence>, or </Response> and the answer as soon "
                       "as it is known.")
# A three-shape caption is ~37 tokens with the tiny tokenizer; the task answers are at most ~16.
CAPTION_MAX_NEW_TOKENS = 48


def _last_checkpoint(work: Path) -> str | None:
    ckpts = sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


def build_data(run: Run) -> None:
    from streampro.dataset_scripts.synth import generate

    with run.stage("data", (run.data / "README.md").is_file()) as todo:
        if todo:
            rec = run.recipe
            generate(run.data, n=rec.n_clips, seed=run.seed, size=rec.size, progress=True,
                     control=rec.control_clips, captions=rec.caption_clips if rec.caption_steps else 0,
                     motion_captions=rec.motion_caption_clips if rec.caption_steps else 0,
                     extra_train=rec.extra_train_clips, extra_validation=rec.extra_validation_clips,
                     silence_factor=rec.silence_factor)


def build_init(run: Run) -> None:
    from streampro.backbones import build_tiny_backbone

    path = run.model_dir("init")
    with run.stage("init", is_model(path)) as todo:
        if todo:
            for stale in path.parent.glob(f".{path.name}.*.tmp"):  # what a killed run was saving
                shutil.rmtree(stale)
            side = run.recipe.size
            tb = build_tiny_backbone("qwen2_5_vl", seed=run.seed, streampro=True, min_pixels=side * side,
                                     max_pixels=side * side, **run.recipe.model_sizes)
            n = sum(p.numel() for p in tb.model.parameters())
            logger.info("tiny Qwen2.5-VL StreamPro model: %.2f M parameters", n / 1e6)
            if run.recipe.centre_image_features:
                centre_image_features(tb.model, tb.processor, _training_frames(run))
            if run.recipe.short_system_prompt:
                tb.processor.system_prompt = SHORT_SYSTEM_PROMPT  # saved with the processor, used by every stage
            # Saved beside, then renamed: a killed save leaves no folder that looks like a finished init.
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tb.model.save_pretrained(tmp)
            tb.processor.save_pretrained(tmp)
            if path.exists():  # a folder without a whole model in it
                shutil.rmtree(path)
            os.replace(tmp, path)


def _training_frames(run: Run, clips: int = 64) -> list:
    """The frames of ``clips`` training clips spread over the file (every task: it is ordered by task).

    The extra training clips, listed last, are left out, so they do not change the init.
    """
    from streampro.dataset_scripts import load_record_frames

    records = read_jsonl(run.data / "sft" / "train.jsonl")
    records = records[:len(records) - run.recipe.extra_train_clips]
    step = max(1, len(records) // clips)
    return [frame for record in records[::step][:clips] for frame in load_record_frames(record, run.data)]


def centre_image_features(model, processor, frames: list, norm: float = 1.0) -> None:
    """Shift and scale the projector's last layer so ``frames`` give features of mean 0, mean norm ``norm``.

    A random tower's image features share one large common direction (norm ~1.1 against ~0.4 for what
    differs between frames); after the language model's RMSNorm every frame then looks almost alike.
    Changes two tensors' values only (Qwen2.5-VL's ``merger.mlp[-1]``), like a data-dependent init.
    """
    import torch

    inputs = processor.image_processor(images=frames, return_tensors="pt")
    last = model.model.visual.merger.mlp[-1]
    with torch.no_grad():
        features = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
        features = getattr(features, "pooler_output", features)
        mean = features.mean(0)
        scale = norm / (features - mean).norm(dim=-1).mean()
        last.bias.sub_(mean).mul_(scale)
        last.weight.mul_(scale)
    logger.info("centred the image features on %d frames (common part %.2f, scaled by %.2f)", len(frames),
                float(mean.norm()), float(scale))


def _train(build_trainer, parser_types, argv: list[str], work: Path) -> None:
    """Parse ``argv`` like the stage script, build its trainer, apply the CPU speed-ups, train, save."""
    from trl import TrlParser

    from streampro.cpu_speedups import apply_cpu_speedups
    from streampro.trainer.sft import save_final

    script_args, training_args, model_args = TrlParser(parser_types).parse_args_and_config(args=argv)
    trainer = build_trainer(script_args, training_args, model_args)
    apply_cpu_speedups(trainer.model)
    trainer.train(resume_from_checkpoint=_last_checkpoint(work))
    save_final(trainer, str(work))
    # The stage's completion mark (is_trained), written last: a kill during the save trains 0 steps and saves again.
    write_text_atomic(work / TRAINED_MARK, json.dumps(trainer.state.log_history, indent=1) + "\n")


def _common_trainer_argv(run: Run, work: Path, steps: int) -> list[str]:
    return [
        "--output_dir", str(work), "--use_cpu", "true", "--bf16", "false", "--activation_checkpointing", "false",
        "--max_steps", str(steps), "--seed", str(run.seed), "--data_seed", str(run.seed), "--report_to", "none",
        "--dataloader_num_workers", "0", "--logging_steps", str(max(1, min(25, steps // 20))),
        "--save_steps", str(max(1, steps // 6)), "--save_total_limit", "1", "--weight_decay", "0.0",
        "--disable_tqdm", "false",
    ]


def _freeze_argv(rec: Recipe) -> list[str]:
    """The whole vision tower, projector included, fixed or trainable (SFT and GRPO alike)."""
    flag = str(rec.freeze_vision).lower()
    return ["--freeze_vision", flag, "--freeze_projector", flag]


def _sampling_argv(rec: Recipe) -> list[str]:
    """Trainer's sampler: random batches, or batches grouped by the records' number of turns."""
    if not rec.group_by_length:
        return []
    return ["--train_sampling_strategy", "group_by_length", "--length_column_name", "num_turns"]


def _train_stage(run: Run, name: str, start: str, kind: str, steps: int, argv: list[str]) -> None:
    """Stage ``name``: ``steps`` steps of ``streampro train {kind}`` (``"sft"``, ``"grpo"`` or ``"activation"``) with
    the stage's own options ``argv``, from the model ``start`` (recorded in ``models/<name>/start.txt``)."""
    from trl import ModelConfig

    if kind == "sft":
        from streampro.trainer.sft import build_trainer
        from streampro.trainer.sft_config import SFTScriptArguments as Script
        from streampro.trainer.sft_config import StreamProSFTConfig as Config
    elif kind == "activation":
        from streampro.trainer.activation import ActivationScriptArguments as Script
        from streampro.trainer.activation import ActivationTrainingConfig as Config
        from streampro.trainer.activation import build_trainer
    else:
        from streampro.trainer.grpo import build_trainer
        from streampro.trainer.grpo_config import GRPOScriptArguments as Script
        from streampro.trainer.grpo_config import StreamProGRPOConfig as Config

    work = run.model_dir(name)
    with run.stage(name, is_trained(work)) as todo:
        if todo:
            work.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(work)
            (work / "start.txt").write_text(start + "\n")
            argv = ["--model", str(run.model_dir(start)), *argv, *_freeze_argv(run.recipe),
                    *_common_trainer_argv(run, work, steps)]
            _train(build_trainer, (Script, Config, ModelConfig), argv, work)


def _sft(run: Run, name: str, start: str, train_file: Path, loss: str, steps: int, batch: int | None = None,
         extra: tuple[str, ...] = ()) -> None:
    """SFT stage ``name``: ``steps`` steps of ``loss`` on ``train_file`` from the model ``start`` (batch: the SFT one;
    ``extra``: more SFT script options)."""
    rec = run.recipe
    _train_stage(run, name, start, "sft", steps, [
        "--train_file", str(train_file), "--eval_file", "", "--frames_root", str(run.data),
        "--frame_cache_dir", str(run.data / ".frame_cache"), "--loss_type", loss,
        "--per_device_train_batch_size", str(batch or rec.sft_batch), *_sampling_argv(rec),
        "--gradient_accumulation_steps", "1", "--learning_rate", str(rec.sft_lr), "--lr_scheduler_type", "cosine",
        "--warmup_steps", str(rec.sft_warmup), *extra,
    ])


def _after_init(run: Run) -> str:
    """The model the curriculum stages and the losses build on: the caption stage's, or the init."""
    return "captions" if run.recipe.caption_steps else "init"


def train_captions(run: Run) -> None:
    """The caption stage (``caption_steps`` > 0): CE on scene captions from the init, tower fixed.

    The fixed random tower's features hold the colour and shape of what a frame shows (a linear probe
    reads them), but the streaming models hardly use them: the words the answers need are rare in the
    streaming data. Captions supervise those words on every frame, like a VLM's image-caption stage.
    The tower stays fixed here too: trained on captions from random initialisation it collapses like
    on the streaming tasks (docs/reproduce.md, "The recipe").
    """
    rec = run.recipe
    parts = [run.data / "sft" / f"{name}_train.jsonl" for name in caption_kinds(rec)]
    train_file = parts[0]
    if len(parts) > 1:  # still scenes and motion captions, in one file (the trainer shuffles them)
        train_file = run.data / "sft" / "caption_stage_train.jsonl"
        write_jsonl(train_file, [r for part in parts for r in read_jsonl(part)])
    _sft(run, "captions", "init", train_file, "ce", rec.caption_steps, batch=rec.caption_batch)


def caption_kinds(recipe: Recipe) -> tuple[str, ...]:
    """The caption stage's data (file-name stems): scene captions, and motion captions when the recipe has them."""
    return ("caption", "motion_caption") if recipe.motion_caption_clips else ("caption",)


def caption_splits(run: Run) -> list[str]:
    """The caption stage's validation benchmarks, one per kind of caption it trained on."""
    return [f"{name}_validation" for name in caption_kinds(run.recipe)]


def train_control_first(run: Run) -> None:
    """The curriculum stage (``control_first_steps`` > 0): the control clips alone, from the init (or captions).

    An easy task where the frames decide everything switches vision on (docs/method.md §6); without it,
    whether the mixed SFT run learns to look at the frames depends on the seed. Shared by the three
    losses, like the init, so their comparison still starts from one model.
    """
    from streampro.dataset_scripts.builders import build_records

    raw = run.data / "raw" / "control_train.jsonl"
    train_file = run.data / "sft" / "control_train.jsonl"
    if not train_file.is_file():
        write_jsonl(train_file, build_records("sft", read_jsonl(raw)))
    _sft(run, "control-first", _after_init(run), train_file, run.recipe.control_first_loss,
         run.recipe.control_first_steps)


def sft_start(run: Run) -> str:
    """The model every SFT loss starts from: the curriculum's, else the caption stage's, else the init."""
    return "control-first" if run.recipe.control_first_steps else _after_init(run)


def train_sft(run: Run, loss: str) -> None:
    _sft(run, f"sft-{loss}", sft_start(run), run.data / "sft" / "train.jsonl", loss, run.recipe.sft_steps)


def _stage_worker(out: Path, recipe: Recipe, seed: int, source: str, stage: str, args: tuple) -> None:
    """One stage in its own process (``--jobs``): one torch thread, its log lines tagged with the worker.

    A worker runs several stages in turn, so the tag is the process id; each stage logs its own name.
    """
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: "
                        "%(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    PARALLEL_STAGES[stage](Run(out, recipe, seed, source), *args)


def _die_with_parent(parent_pid: int) -> None:
    """Pool initializer: a killed ``reproduce`` takes its workers with it (on Linux), so an orphan never
    trains on, or races a resumed run writing, the same stage folder."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def run_stages(run: Run, jobs: int, stage: str, calls: list[tuple]) -> None:
    """``stage(run, *args)`` for each args in ``calls``: in order, or in ``jobs`` parallel processes.

    Stages are independent and each writes its own output, so the order does not matter; a worker's
    error is re-raised here. Numbers match the serial run up to floating-point summation order (one
    torch thread per process).
    """
    if jobs <= 1 or len(calls) <= 1:
        for args in calls:
            PARALLEL_STAGES[stage](run, *args)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(jobs, len(calls)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(_stage_worker, run.out, run.recipe, run.seed, run.source, stage, args)
                   for args in calls]
        for future in futures:
            future.result()
    run.timings = json.loads(run.timings_path.read_text())


def best_sft_model(run: Run, jobs: int = 1) -> str:
    """The SFT model with the best VALIDATION W-Avg F1 (evaluating the SFT models on validation first)."""
    run_stages(run, jobs, "evaluate", [(m, "validation") for m in SFT_MODELS])
    scores = {m: run.results(m, "validation")["w_avg_f1"] or 0.0 for m in SFT_MODELS}
    return max(SFT_MODELS, key=lambda m: (scores[m], -SFT_MODELS.index(m)))


def train_grpo(run: Run, name: str = "grpo", start: str = "sft-cb_stream") -> None:
    """GRPO stage ``name`` from the SFT model ``start``: offline rewards, the paper's RL tasks (docs/method.md §5)."""
    rec = run.recipe
    _train_stage(run, name, start, "grpo", rec.grpo_steps, [
        "--train_file", str(run.data / "rl" / "train.jsonl"), "--tasks", *RL_TASKS, "--frames_root", str(run.data),
        "--frame_cache_dir", str(run.data / ".frame_cache"), "--turn_judge", "exact", "--rubric_judge", "offline",
        "--window_turns", "32", "--max_frames_per_rollout", "32",
        "--max_new_tokens", str(rec.grpo_max_new_tokens), "--num_generations", str(rec.grpo_generations),
        "--per_device_train_batch_size", str(rec.grpo_batch), "--gradient_accumulation_steps", "1",
        "--learning_rate", str(rec.grpo_lr), "--lr_scheduler_type", "constant", "--beta", "0.0",
    ])


def evaluate(run: Run, model: str, split: str, shuffle: bool = False, max_new_tokens: int | None = None,
             system: str | None = None, protocol: tuple[str, ...] = ()) -> Path:
    """``streampro evaluate`` (exact judge) of one model on one split; resumable by the harness.

    ``protocol``: more ``evaluate`` options that run the model in another protocol, into ``eval/<system>/``
    (the systems comparison, docs/reproduce.md).
    """
    from streampro.cli import evaluate as eval_cli

    name = f"{split}-shuffled" if shuffle else split
    out = run.eval_dir(system or model, name)
    with run.stage(f"eval {system or model} {name}", (out / "report.json").is_file()) as todo:
        if todo:
            parser = argparse.ArgumentParser()
            eval_cli.add_arguments(parser)
            argv = ["--model", str(run.model_dir(model)), "--benchmark", str(run.data / "bench" / f"{split}.jsonl"),
                    "--video-root", str(run.data), "--out", str(out), "--judge", "exact",
                    "--max-new-tokens", str(max_new_tokens or run.recipe.eval_max_new_tokens), "--no-progress",
                    "--plot-samples", "0"]
            argv += list(protocol)
            if shuffle:
                argv += ["--shuffle-frames", str(SHUFFLE_SEED)]
            if run.recipe.eval_batch_streams > 1 and not protocol:  # only the streampro protocol batches streams
                argv += ["--batch-streams", str(run.recipe.eval_batch_streams)]
            code = eval_cli.run(parser.parse_args(argv))
            if code != 0:
                raise RuntimeError(f"streampro evaluate failed (exit {code}) for {model} on {name}; see the log above")
    return out


def _systems_stage(run: Run, stage: str, *args) -> None:
    """A training stage of the systems comparison (:mod:`streampro.reproduce.systems`), imported when used."""
    from streampro.reproduce.systems import TRAINING_STAGES

    TRAINING_STAGES[stage](run, *args)


# The stages ``run_stages`` may spread over processes (looked up by name in a spawned worker).
PARALLEL_STAGES = {"sft": train_sft, "grpo": train_grpo, "evaluate": evaluate, "systems": _systems_stage}




def reproduce(run: Run, jobs: int = 1) -> dict:
    """Every stage in order (each skipped when done), then the baseline and the report; returns the summary."""
    from streampro.reproduce.report import write_report

    build_data(run)
    build_init(run)
    if run.recipe.caption_steps:
        train_captions(run)
        for split in caption_splits(run):
            evaluate(run, "captions", split, max_new_tokens=CAPTION_MAX_NEW_TOKENS)
    if run.recipe.control_first_steps:
        train_control_first(run)
    run_stages(run, jobs, "sft", [(loss,) for loss in LOSSES])
    if run.recipe.grpo_steps:
        run_stages(run, jobs, "grpo", [("grpo", "sft-cb_stream"), ("grpo-best", best_sft_model(run, jobs))])
    splits = [("validation",), ("test",), ("test", True)]
    if run.recipe.control_clips:
        splits += [("control_test",), ("control_test", True)]
    run_stages(run, jobs, "evaluate", [(m, *split) for m in run.models for split in splits])
    return write_report(run)
