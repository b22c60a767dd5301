"""``streampro reproduce``: the paper's training story on StreamPro-Synth, end to end, on a CPU.

    streampro reproduce --out runs/reproduce --jobs 3        # the full run (docs/reproduce.md)
    streampro reproduce --out runs/reproduce-plain --plain   # the paper's stages alone (the first runs)
    streampro reproduce --out runs/reproduce-quick --quick   # a minutes-long smoke run (CI)
    streampro reproduce --out runs/reproduce --install-assets   # also ship the chosen model + demo clips

Stages, each skipped when its output already exists (kill it at any time and run the same command
again; a half-trained SFT/GRPO stage resumes from its last Trainer checkpoint):

1. ``data``   — StreamPro-Synth (``streampro data synth``) at ``--size`` px, its control task and
   scene captions.
2. ``init``   — one tiny, randomly initialised Qwen2.5-VL StreamPro model (real architecture,
   tiny config), shared by every loss so that only the loss differs; its image features centred.
3. ``captions``, ``control-first`` — teach the language model to read the frames (CE on scene
   captions), then a CB-Stream warm-up on the control task alone; every loss starts from there.
   ``--plain`` skips both (and the init changes): the recipe of the first runs.
4. ``sft-ce``, ``sft-focal``, ``sft-cb_stream`` — SFT with the same data order, steps, batch,
   learning rate and seed (``streampro train sft`` code path, ``trainer/sft.py``).
5. ``grpo``   — GRPO from the ``cb_stream`` checkpoint (``trainer/grpo.py``), offline rewards (the
   paper's recipe); ``grpo-best`` — the same GRPO from the SFT model with the best VALIDATION W-Avg
   (which may be another loss: GRPO needs a policy that already looks at the frames).
6. ``eval``   — ``streampro evaluate`` (exact judge) of every model on the test split, on the test
   split with frames shuffled in time (``--shuffle-frames``), and on the validation split.
7. ``baseline`` — per task, answer once at the best constant time with the most common answer,
   both chosen on the VALIDATION split, scored on test by the same metric.
8. ``report`` — ``results.md`` / ``results.json`` (paper layout + controls + "works" marks) and
   plots; the final model is chosen by VALIDATION W-Avg F1 (never by test).

Nothing here selects a setting on the test split. The CPU speed-ups of
:mod:`streampro.cpu_speedups` (numerically equivalent) are applied to the training models.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

logger = logging.getLogger(__name__)

LOSSES = ("ce", "focal", "cb_stream")
SFT_MODELS = tuple(f"sft-{loss}" for loss in LOSSES)
GRPO_MODELS = ("grpo", "grpo-best")
MODELS = SFT_MODELS + GRPO_MODELS
RL_TASKS = ("EU", "OU", "AA", "TP", "TG", "GP")  # the paper's RL tasks (no RF)
SHUFFLE_SEED = 0
# A model "works" on a task when it beats the fixed-time baseline AND its F1 under shuffled
# frames falls by at least this many points and this fraction of its own F1.
SHUFFLE_DROP_POINTS = 5.0
SHUFFLE_DROP_FRACTION = 0.25
ASSETS_DIR = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class Budget:
    """Everything that sets the cost of a run; the same for the three SFT losses."""

    n_clips: int = 1400  # StreamPro-Synth clips over 7 tasks: 160 train / 20 validation / 20 test per task
    control_clips: int = 200  # the easy control task (160 / 20 / 20): trained on, reported apart from the 7 tasks
    # More training clips of the seven tasks, drawn after the n_clips (validation and test unchanged):
    # 4,200 = 600 more per task, 760 in all (docs/reproduce.md, "Tenth session").
    extra_train_clips: int = 4200
    # More validation clips, drawn after those (training and test unchanged): 560 = 80 more per task, 100 in
    # all, so that choosing the final model among five is not decided by one or two of 20 clips per task
    # (docs/reproduce.md, "Eleventh session").
    extra_validation_clips: int = 560
    # Frame side in px: 84 px = 6x6 patches of 14 px = 9 image tokens per frame, one per cell of the 3x3 grid
    # the shapes move on (56 px = 4 tokens, each a quadrant: the first runs).
    size: int = 84
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 384
    vision_hidden: int = 128
    vision_depth: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 256
    # The tiny tokenizer (streampro.backbones.TINY_TOKENIZERS): v2 keeps the Synth words whole and splits
    # numbers into digits like Qwen2's; v1 (the first runs) split colour words and two-digit times into pieces.
    tokenizer: str = "v2"
    sft_steps: int = 1000
    sft_batch: int = 4
    sft_lr: float = 1e-3
    sft_warmup: int = 20
    # Batches of clips of similar length (Trainer's "group_by_length" sampler on the records' num_turns) in
    # every SFT stage: less padding per step, the same clips per epoch. Off: it ruined the caption stage, whose
    # batches then alternate between all still scenes and all motion clips (docs/reproduce.md, "Tenth session").
    group_by_length: bool = False
    # The default recipe teaches the tiny language model to read the frames before the streaming tasks
    # (docs/reproduce.md, "Reading the frames"); ``--plain`` (PLAIN_RECIPE) turns all of it off.
    # > 0: first of all, train this many steps of CE on scene captions (``caption_clips`` still frames of
    # 1-3 shapes and their description, 80/10/10) from the init, the tower fixed as below: the job of a
    # VLM's image-caption stage. 2,500 steps: mixed with the motion captions, 1,500 left it half-trained
    # (docs/reproduce.md, "Motion captions").
    caption_steps: int = 2500
    caption_clips: int = 2000
    caption_batch: int = 16
    # > 0: the caption stage also trains on this many motion captions (one shape makes one step, named at
    # its end in EU's words), which teach the action words EU and TP need; 0 = still scenes only.
    motion_caption_clips: int = 2000
    # > 0: then train this many steps on the control task's clips alone (with ``control_first_loss``), and
    # start every loss from that model (the "control first" curriculum with a CB-Stream warm-up).
    control_first_steps: int = 200
    control_first_loss: str = "cb_stream"
    # Shift and scale the projector's output layer at init so that the image features of the training
    # frames have mean 0 and a mean norm of 1 (a data-dependent init; the architecture is unchanged):
    # the random tower's features share one large common direction.
    centre_image_features: bool = True
    # The tiny model's system prompt: SHORT_SYSTEM_PROMPT instead of the 200-token default, which
    # dilutes a 3-layer model's attention.
    short_system_prompt: bool = True
    # The randomly initialised vision tower, projector included, stays fixed in SFT and GRPO (a random-
    # feature encoder): trained at lr 1e-3 its features collapsed to one direction and the models
    # ignored the frames (docs/reproduce.md, "What changed").
    freeze_vision: bool = True
    grpo_steps: int = 30
    grpo_generations: int = 4
    grpo_batch: int = 8  # completions per step: 2 samples x 4 rollouts
    grpo_lr: float = 5e-5
    grpo_max_new_tokens: int = 16
    eval_max_new_tokens: int = 24

    def model_sizes(self) -> dict:
        keys = ("text_hidden", "text_layers", "text_heads", "text_kv_heads", "text_intermediate",
                "vision_hidden", "vision_depth", "vision_heads", "vision_intermediate")
        return {k: getattr(self, k) for k in keys}


FULL = Budget()
# --quick: 3 clips per task and of the control task (1 train / 1 validation / 1 test), a smaller model,
# a few steps.
QUICK = replace(FULL, n_clips=21, control_clips=3, text_hidden=64, text_layers=2, text_intermediate=128, vision_hidden=32,
                vision_heads=2, vision_intermediate=64, sft_steps=3, sft_batch=2, sft_warmup=0, grpo_steps=1,
                grpo_generations=2, grpo_batch=2, grpo_max_new_tokens=4, eval_max_new_tokens=2, caption_steps=2,
                caption_clips=3, caption_batch=2, motion_caption_clips=3, control_first_steps=2, extra_train_clips=7,
                extra_validation_clips=7)
# The recipe of the first runs (the paper's stages alone), before the default learned to read the frames.
PLAIN_RECIPE = {"caption_steps": 0, "motion_caption_clips": 0, "control_first_steps": 0, "control_first_loss": "ce",
                "centre_image_features": False, "short_system_prompt": False, "tokenizer": "v1", "size": 56,
                "extra_train_clips": 0, "extra_validation_clips": 0}


# Budget fields added after the first runs: a settings.json that lacks one is filled in with what runs
# from before it did (its stage off: PLAIN_RECIPE; the caption clips and batch, unused then, as the default).
ADDED_FIELDS = ("control_first_steps", "control_first_loss", "caption_steps", "caption_clips", "caption_batch",
                "centre_image_features", "short_system_prompt", "motion_caption_clips", "extra_train_clips",
                "group_by_length", "tokenizer", "extra_validation_clips")
SHORT_SYSTEM_PROMPT = ("You are StreamPro. After each frame answer </Silence>, or </Response> and the answer as soon "
                       "as it is known.")


def stored_budget(settings: dict) -> dict:
    """A run's budget as recorded in its ``settings.json``, fields added since then filled in."""
    default = {**asdict(QUICK if settings.get("quick") else FULL), **PLAIN_RECIPE}
    return {**{k: default[k] for k in ADDED_FIELDS}, **settings.get("budget", {})}


# --------------------------------------------------------------------------------------------
# Stage bookkeeping
# --------------------------------------------------------------------------------------------


class Run:
    """The output folder, its stage timings (``timings.json``) and the budget it was started with."""

    def __init__(self, out: Path, budget: Budget, seed: int, quick: bool, models: tuple[str, ...] = MODELS):
        self.out, self.budget, self.seed, self.quick, self.models = out, budget, seed, quick, models
        out.mkdir(parents=True, exist_ok=True)
        settings = {"budget": asdict(budget), "seed": seed, "quick": quick}
        path = out / "settings.json"
        if path.exists():
            stored = json.loads(path.read_text())
            stored["budget"] = stored_budget(stored)
            if stored != settings:
                raise ValueError(
                    f"{out} was started with other settings ({path}: {stored}); resume with the same options "
                    "or pass a new --out"
                )
        else:
            path.write_text(json.dumps(settings, indent=2) + "\n")
        self.timings_path = out / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}

    @property
    def data(self) -> Path:
        return self.out / "data"

    def model_dir(self, name: str) -> Path:
        return self.out / "models" / name

    def eval_dir(self, model: str, split: str) -> Path:
        return self.out / "eval" / model / split

    @contextmanager
    def stage(self, name: str, done: bool):
        """Log a stage's start and wall time; skip its body (yield False) when ``done``."""
        if done:
            logger.info("[%s] already done, skipped", name)
            yield False
            return
        logger.info("[%s] started", name)
        start = time.monotonic()
        yield True
        seconds = time.monotonic() - start
        self.record_time(name, seconds)
        logger.info("[%s] done in %.1f s", name, seconds)

    def record_time(self, name: str, seconds: float) -> None:
        """Add one stage's wall time to ``timings.json`` (locked: parallel SFT workers share the file)."""
        import fcntl

        with (self.out / ".timings.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stored = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
            stored[name] = round(seconds, 1)
            # Replaced, not rewritten in place: a worker starting up reads the file without the lock.
            partial = self.timings_path.with_suffix(".json.partial")
            partial.write_text(json.dumps(stored, indent=2) + "\n")
            partial.replace(self.timings_path)
            self.timings = stored


def _is_model(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _last_checkpoint(work: Path) -> str | None:
    ckpts = sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def build_data(run: Run) -> None:
    from streampro.dataset_scripts.synth import generate

    with run.stage("data", (run.data / "README.md").is_file()) as todo:
        if todo:
            b = run.budget
            generate(run.data, n=b.n_clips, seed=run.seed, size=b.size, progress=True, control=b.control_clips,
                     captions=b.caption_clips if b.caption_steps else 0,
                     motion_captions=b.motion_caption_clips if b.caption_steps else 0, extra_train=b.extra_train_clips,
                     extra_validation=b.extra_validation_clips)


def build_init(run: Run) -> None:
    from streampro.backbones import build_tiny_backbone

    path = run.model_dir("init")
    with run.stage("init", _is_model(path)) as todo:
        if todo:
            side = run.budget.size
            tb = build_tiny_backbone("qwen2_5_vl", seed=run.seed, streampro=True, min_pixels=side * side,
                                     max_pixels=side * side, tokenizer_version=run.budget.tokenizer,
                                     **run.budget.model_sizes())
            n = sum(p.numel() for p in tb.model.parameters())
            logger.info("tiny Qwen2.5-VL StreamPro model: %.2f M parameters", n / 1e6)
            if run.budget.centre_image_features:
                centre_image_features(tb.model, tb.processor, _training_frames(run))
            if run.budget.short_system_prompt:
                tb.processor.system_prompt = SHORT_SYSTEM_PROMPT  # saved with the processor, used by every stage
            tb.model.save_pretrained(path)
            tb.processor.save_pretrained(path)


def _training_frames(run: Run, clips: int = 64) -> list:
    """The frames of ``clips`` training clips spread over the file (every task: it is ordered by task).

    The extra training clips, listed last, are left out, so they do not change the init.
    """
    from streampro.dataset_scripts import load_record_frames

    records = _read_jsonl(run.data / "sft" / "train.jsonl")
    records = records[:len(records) - run.budget.extra_train_clips]
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
    (work / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")


def _common_trainer_argv(run: Run, work: Path, steps: int) -> list[str]:
    return [
        "--output_dir", str(work), "--use_cpu", "true", "--bf16", "false", "--activation_checkpointing", "false",
        "--max_steps", str(steps), "--seed", str(run.seed), "--data_seed", str(run.seed), "--report_to", "none",
        "--dataloader_num_workers", "0", "--logging_steps", str(max(1, min(25, steps // 20))),
        "--save_steps", str(max(1, steps // 6)), "--save_total_limit", "1", "--weight_decay", "0.0",
        "--disable_tqdm", "false",
    ]


def _freeze_argv(b: Budget) -> list[str]:
    """The whole vision tower, projector included, fixed or trainable (SFT and GRPO alike)."""
    flag = str(b.freeze_vision).lower()
    return ["--freeze_vision", flag, "--freeze_projector", flag]


def _sampling_argv(b: Budget) -> list[str]:
    """Trainer's sampler: random batches, or batches grouped by the records' number of turns."""
    if not b.group_by_length:
        return []
    return ["--train_sampling_strategy", "group_by_length", "--length_column_name", "num_turns"]


def _sft(run: Run, name: str, start: str, train_file: Path, loss: str, steps: int, batch: int | None = None) -> None:
    """SFT stage ``name``: ``steps`` steps of ``loss`` on ``train_file`` from the model ``start`` (batch: the SFT one)."""
    from trl import ModelConfig

    from streampro.trainer.sft import build_trainer
    from streampro.trainer.sft_config import SFTScriptArguments, StreamProSFTConfig

    work = run.model_dir(name)
    with run.stage(name, _is_model(work)) as todo:
        if todo:
            b = run.budget
            work.mkdir(parents=True, exist_ok=True)
            (work / "start.txt").write_text(start + "\n")
            argv = [
                "--model", str(run.model_dir(start)), "--train_file", str(train_file),
                "--eval_file", "", "--frames_root", str(run.data), "--frame_cache_dir", str(run.data / ".frame_cache"),
                "--loss_type", loss, *_freeze_argv(b),
                "--per_device_train_batch_size", str(batch or b.sft_batch), *_sampling_argv(b),
                "--gradient_accumulation_steps", "1", "--learning_rate", str(b.sft_lr), "--lr_scheduler_type",
                "cosine", "--warmup_steps", str(b.sft_warmup), *_common_trainer_argv(run, work, steps),
            ]
            _train(build_trainer, (SFTScriptArguments, StreamProSFTConfig, ModelConfig), argv, work)


def _after_init(run: Run) -> str:
    """The model the curriculum stages and the losses build on: the caption stage's, or the init."""
    return "captions" if run.budget.caption_steps else "init"


def train_captions(run: Run) -> None:
    """The caption stage (``caption_steps`` > 0): CE on scene captions from the init, tower fixed.

    The fixed random tower's features hold the colour and shape of what a frame shows (a linear probe
    reads them), but the streaming models hardly use them: the words the answers need are rare in the
    streaming data. Captions supervise those words on every frame, like a VLM's image-caption stage.
    The tower stays fixed here too: trained on captions from random initialisation it collapsed like
    on the streaming tasks (docs/reproduce.md, "Reading the frames").
    """
    from streampro.dataset_scripts.builders import write_jsonl

    b = run.budget
    parts = [run.data / "sft" / f"{name}_train.jsonl" for name in caption_kinds(b)]
    for part in parts:
        if not part.is_file():
            raise FileNotFoundError(f"{part} not found: the caption stage needs the data stage's caption clips; "
                                    "start a new --out (runs from before these options have none)")
    train_file = parts[0]
    if len(parts) > 1:  # still scenes and motion captions, in one file (the trainer shuffles them)
        train_file = run.data / "sft" / "caption_stage_train.jsonl"
        write_jsonl(train_file, [r for part in parts for r in _read_jsonl(part)])
    _sft(run, "captions", "init", train_file, "ce", b.caption_steps, batch=b.caption_batch)


def caption_kinds(budget: Budget) -> tuple[str, ...]:
    """The caption stage's data (file-name stems): scene captions, and motion captions when the budget has them."""
    return ("caption", "motion_caption") if budget.motion_caption_clips else ("caption",)


def caption_splits(run: Run) -> list[str]:
    """The caption stage's validation benchmarks, one per kind of caption it trained on."""
    return [f"{name}_validation" for name in caption_kinds(run.budget)]


def train_control_first(run: Run) -> None:
    """The curriculum stage (``control_first_steps`` > 0): the control clips alone, from the init (or captions).

    An easy task where the frames decide everything switches vision on (docs/method.md §6); whether the mixed
    SFT run does so by itself depended on the seed (docs/reproduce.md, "Seed replicates"). Shared by the
    three losses, like the init, so their comparison still starts from one model.
    """
    from streampro.dataset_scripts.builders import build_records, write_jsonl

    raw = run.data / "raw" / "control_train.jsonl"
    if not raw.is_file():
        raise FileNotFoundError(f"{raw} not found: the control-first stage needs the control task's clips "
                                "(a budget with control_clips > 0)")
    train_file = run.data / "sft" / "control_train.jsonl"
    if not train_file.is_file():
        write_jsonl(train_file, build_records("sft", _read_jsonl(raw)))
    _sft(run, "control-first", _after_init(run), train_file, run.budget.control_first_loss,
         run.budget.control_first_steps)


def train_sft(run: Run, loss: str) -> None:
    start = "control-first" if run.budget.control_first_steps else _after_init(run)
    _sft(run, f"sft-{loss}", start, run.data / "sft" / "train.jsonl", loss, run.budget.sft_steps)


def _stage_worker(out: Path, budget: Budget, seed: int, quick: bool, models: tuple[str, ...], stage: str,
                  args: tuple) -> None:
    """One stage in its own process (``--jobs``): one torch thread, its log lines tagged with the worker.

    A worker runs several stages in turn, so the tag is the process id; each stage logs its own name.
    """
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: "
                        "%(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    PARALLEL_STAGES[stage](Run(out, budget, seed, quick, models), *args)


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
        futures = [pool.submit(_stage_worker, run.out, run.budget, run.seed, run.quick, run.models, stage, args)
                   for args in calls]
        for future in futures:
            future.result()
    run.timings = json.loads(run.timings_path.read_text())


def best_sft_model(run: Run, jobs: int = 1) -> str:
    """The SFT model with the best VALIDATION W-Avg F1 (evaluating the SFT models on validation first)."""
    run_stages(run, jobs, "evaluate", [(m, "validation") for m in SFT_MODELS])
    scores = {m: _results(run, m, "validation")["w_avg_f1"] or 0.0 for m in SFT_MODELS}
    return max(SFT_MODELS, key=lambda m: (scores[m], -SFT_MODELS.index(m)))


def _grpo_start(run: Run, name: str) -> str:
    path = run.model_dir(name) / "start.txt"
    return path.read_text().strip() if path.is_file() else "sft-cb_stream"  # runs older than start.txt


def train_grpo(run: Run, name: str = "grpo", start: str = "sft-cb_stream") -> None:
    """GRPO stage ``name`` from the SFT model ``start`` (recorded in ``models/<name>/start.txt``)."""
    from trl import ModelConfig

    from streampro.trainer.grpo import build_trainer
    from streampro.trainer.grpo_config import GRPOScriptArguments, StreamProGRPOConfig

    work = run.model_dir(name)
    with run.stage(name, _is_model(work)) as todo:
        if todo:
            b = run.budget
            work.mkdir(parents=True, exist_ok=True)
            (work / "start.txt").write_text(start + "\n")
            argv = [
                "--model", str(run.model_dir(start)), "--train_file", str(run.data / "rl" / "train.jsonl"),
                "--tasks", *RL_TASKS, "--frames_root", str(run.data), "--frame_cache_dir",
                str(run.data / ".frame_cache"), "--turn_judge", "exact", "--rubric_judge", "offline",
                "--window_turns", "32", "--max_frames_per_rollout", "32",
                "--max_new_tokens", str(b.grpo_max_new_tokens), "--num_generations", str(b.grpo_generations),
                "--per_device_train_batch_size", str(b.grpo_batch), "--gradient_accumulation_steps", "1",
                "--learning_rate", str(b.grpo_lr), "--lr_scheduler_type", "constant", "--beta", "0.0",
                *_freeze_argv(b), *_common_trainer_argv(run, work, b.grpo_steps),
            ]
            _train(build_trainer, (GRPOScriptArguments, StreamProGRPOConfig, ModelConfig), argv, work)


# A three-shape caption is ~37 tokens with the tiny tokenizer; the task answers are at most ~16.
CAPTION_MAX_NEW_TOKENS = 48


def evaluate(run: Run, model: str, split: str, shuffle: bool = False, max_new_tokens: int | None = None) -> Path:
    """``streampro evaluate`` (exact judge) of one model on one split; resumable by the harness."""
    from streampro.cli import evaluate as eval_cli

    name = f"{split}-shuffled" if shuffle else split
    out = run.eval_dir(model, name)
    with run.stage(f"eval {model} {name}", (out / "report.json").is_file()) as todo:
        if todo:
            parser = argparse.ArgumentParser()
            eval_cli.add_arguments(parser)
            argv = ["--model", str(run.model_dir(model)), "--benchmark", str(run.data / "bench" / f"{split}.jsonl"),
                    "--video-root", str(run.data), "--out", str(out), "--judge", "exact",
                    "--max-new-tokens", str(max_new_tokens or run.budget.eval_max_new_tokens), "--no-progress",
                    "--plot-samples", "0"]
            if shuffle:
                argv += ["--shuffle-frames", str(SHUFFLE_SEED)]
            code = eval_cli.run(parser.parse_args(argv))
            if code != 0:
                raise RuntimeError(f"streampro evaluate failed (exit {code}) for {model} on {name}; see the log above")
    return out


# The stages ``run_stages`` may spread over processes (looked up by name in a spawned worker).
PARALLEL_STAGES = {"sft": train_sft, "grpo": train_grpo, "evaluate": evaluate}


def _report(run: Run, model: str, split: str) -> dict:
    """``streampro evaluate``'s report for one model on one (possibly shuffled) split."""
    return json.loads((run.eval_dir(model, split) / "report.json").read_text())


def _results(run: Run, model: str, split: str) -> dict:
    return _report(run, model, split)["results"]


# The paper's claims as paired comparisons on the same test clips: CB-Stream >= focal >= CE, GRPO >= SFT.
LOSS_PAIRS = (("sft-cb_stream", "sft-focal"), ("sft-focal", "sft-ce"), ("sft-cb_stream", "sft-ce"))


def bootstrap_intervals(run: Run, starts: dict[str, str]) -> dict:
    """How much of the test table is the 20 clips per task: a bootstrap interval of each model's W-Avg,
    and paired intervals of the differences the paper claims (each GRPO model against its SFT start)."""
    from streampro.metrics import paired_difference_interval, w_avg_interval

    per_sample = {m: _report(run, m, "test")["per_sample"] for m in run.models}
    pairs = [p for p in (*LOSS_PAIRS, *starts.items()) if p[0] in per_sample and p[1] in per_sample]
    return {
        "w_avg": {m: list(w_avg_interval(s)) for m, s in per_sample.items()},
        "differences": [{"a": a, "b": b, **paired_difference_interval(per_sample[a], per_sample[b])}
                        for a, b in pairs],
    }


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fixed_time_baseline(run: Run) -> dict:
    """Per task: the constant answer time and most common answer that maximise VALIDATION F1, scored on test.

    With a control task, the same is done for it (``control_validation`` → ``control_test``), apart.
    """
    path = run.out / "baseline" / "baseline.json"
    with run.stage("baseline", path.is_file()) as todo:
        if todo:
            bench = run.data / "bench"
            result = _fit_constant(_read_jsonl(bench / "validation.jsonl"), _read_jsonl(bench / "test.jsonl"))
            if run.budget.control_clips:
                result["control"] = _fit_constant(_read_jsonl(bench / "control_validation.jsonl"),
                                                  _read_jsonl(bench / "control_test.jsonl"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2) + "\n")
    return json.loads(path.read_text())


def _fit_constant(validation: list[dict], test: list[dict]) -> dict:
    from streampro.metrics import TASKS, compute_streampro_f1

    choice = {}
    for task in TASKS:
        refs = [r for r in validation if r["task"] == task]
        if not refs:
            continue
        answer = Counter(a["text"] for r in refs for a in r["answers"]).most_common(1)[0][0]
        longest = int(max(r["duration"] for r in refs))
        best = None
        for t in range(1, longest + 1):
            preds = [_constant(t, answer, r) for r in refs]
            f1 = compute_streampro_f1(preds, refs, judge="exact")[f"{task}_f1"]
            if best is None or f1 > best[0]:  # the earliest time wins ties
                best = (f1, t)
        choice[task] = {"time": float(best[1]), "answer": answer, "validation_f1": best[0]}
    preds = [_constant(choice[r["task"]]["time"], choice[r["task"]]["answer"], r) for r in test]
    return {"choice": choice, "results": compute_streampro_f1(preds, test, judge="exact")}


def _constant(t: float, answer: str, ref: dict) -> list[dict]:
    # A clip shorter than t gets no answer at all (it scores 0, like a model that stays silent).
    return [{"time": float(t), "text": answer}] if t <= ref["duration"] else []


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def collect(run: Run, baseline: dict) -> dict:
    """Every row of the results table (test split) plus validation W-Avg for model selection."""
    rows = {"fixed-time baseline": baseline["results"]}
    validation = {}
    for model in run.models:
        rows[model] = _results(run, model, "test")
        rows[f"{model} (shuffled frames)"] = _results(run, model, "test-shuffled")
        validation[model] = _results(run, model, "validation")
    final = max(run.models, key=lambda m: (validation[m]["w_avg_f1"] or 0.0, -run.models.index(m)))
    works = {}
    for model in run.models:
        works[model] = {}
        for task in _tasks(rows[model]):
            f1, base = rows[model][f"{task}_f1"], rows["fixed-time baseline"].get(f"{task}_f1", 0.0)
            shuffled = rows[f"{model} (shuffled frames)"].get(f"{task}_f1", 0.0)
            drop = f1 - shuffled
            works[model][task] = bool(f1 > base and drop >= SHUFFLE_DROP_POINTS and drop >= SHUFFLE_DROP_FRACTION * f1)
    control = None
    if run.budget.control_clips:
        # The control clips are scored as task OU (its window); reported on their own, never in W-Avg.
        control = {"fixed-time baseline": baseline["control"]["results"]["OU_f1"]}
        for model in run.models:
            control[model] = _results(run, model, "control_test")["OU_f1"]
            control[f"{model} (shuffled frames)"] = _results(run, model, "control_test-shuffled")["OU_f1"]
    starts = {m: _grpo_start(run, m) for m in run.models if m in GRPO_MODELS}
    captions = _results(run, "captions", "caption_validation")["OU_f1"] if run.budget.caption_steps else None
    motion = (_results(run, "captions", "motion_caption_validation")["EU_f1"]
              if run.budget.caption_steps and run.budget.motion_caption_clips else None)
    return {
        "rows": rows,
        "grpo_starts": starts,
        "test_intervals": bootstrap_intervals(run, starts),
        "control_f1": control,
        "caption_validation_f1": captions,
        "motion_caption_validation_f1": motion,
        "models": list(run.models),
        "validation_w_avg_f1": {m: validation[m]["w_avg_f1"] for m in run.models},
        "final_model": final,
        "works": works,
        "baseline_choice": baseline["choice"],
        "timings_s": run.timings,
        "settings": json.loads((run.out / "settings.json").read_text()),
    }


def _tasks(results: dict) -> list[str]:
    from streampro.metrics import TASKS

    return [t for t in TASKS if f"{t}_f1" in results]


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def format_results(summary: dict) -> str:
    from streampro.metrics import TASKS

    rows = summary["rows"]
    lines = ["# StreamPro-Synth reproduction (test split, exact judge, ×100)", "",
             f"Run: {_run_label(summary['settings'])} (settings.json has the whole budget).", ""]
    head = "| model | " + " | ".join(f"{t} Time | {t} Acc | {t} P | {t} R | {t} F1" for t in TASKS)
    lines += [head + " | PU | TR | PA | Avg | W-Avg |", "|---" * (2 + 5 * len(TASKS) + 4) + "|"]
    for name, r in rows.items():
        cells = [_fmt(r.get(f"{t}_{k}")) for t in TASKS for k in ("time", "acc", "precision", "recall", "f1")]
        cells += [_fmt(r.get(k)) for k in ("PU_f1", "TR_f1", "PA_f1", "avg_f1", "w_avg_f1")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Per-task F1 and controls", "",
              ("A model *works* on a task (✓) when its F1 beats the fixed-time baseline and falls by ≥ "
              f"{SHUFFLE_DROP_POINTS:g} points and ≥ {100 * SHUFFLE_DROP_FRACTION:g} % of itself when the frames are "
              "shuffled in time."), "",
              "| model | " + " | ".join(TASKS) + " | W-Avg | works on |", "|---" * (len(TASKS) + 3) + "|"]
    base, models = rows["fixed-time baseline"], summary["models"]
    lines.append("| fixed-time baseline | " + " | ".join(_fmt(base.get(f"{t}_f1")) for t in TASKS)
                 + f" | {_fmt(base.get('w_avg_f1'))} | – |")
    for model in models:
        r, s, w = rows[model], rows[f"{model} (shuffled frames)"], summary["works"][model]
        cells = [f"{_fmt(r.get(f'{t}_f1'))} / {_fmt(s.get(f'{t}_f1'))}{' ✓' if w.get(t) else ''}" for t in TASKS]
        lines.append(f"| {model} (plain / shuffled) | " + " | ".join(cells)
                     + f" | {_fmt(r.get('w_avg_f1'))} / {_fmt(s.get('w_avg_f1'))} | {sum(w.values())} of {len(w)} |")
    if summary.get("test_intervals"):
        intervals = summary["test_intervals"]
        lines += ["", "## How much of this is the test clips (bootstrap, 95 %)", "",
                  "Each task's test clips resampled with replacement (10,000 draws). Test W-Avg [interval]: "
                  + ", ".join(f"{m} {_fmt(rows[m].get('w_avg_f1'))} [{_fmt(lo)}, {_fmt(hi)}]"
                              for m, (lo, hi) in intervals["w_avg"].items()) + ".", "",
                  "| comparison (same clips, paired) | W-Avg difference | 95 % interval |", "|---|---|---|"]
        lines += [f"| {d['a']} − {d['b']} | {d['difference']:+.1f} | [{d['low']:+.1f}, {d['high']:+.1f}] |"
                  for d in intervals["differences"]]
    if summary.get("control_f1"):
        c = summary["control_f1"]
        lines += ["", "## Control task: \"the screen changes colour\" (trained on; not one of the seven, not in W-Avg)",
                  "", "| model | F1 | F1, shuffled frames |", "|---|---|---|",
                  f"| fixed-time baseline | {_fmt(c['fixed-time baseline'])} | – |"]
        lines += [f"| {m} | {_fmt(c[m])} | {_fmt(c[f'{m} (shuffled frames)'])} |" for m in models]
    if summary.get("caption_validation_f1") is not None:
        lines += ["", f"Caption stage: F1 {_fmt(summary['caption_validation_f1'])} on the validation captions (exact "
                  "match of the whole description; the later stages start from this model)."]
    if summary.get("motion_caption_validation_f1") is not None:
        lines += ["", f"Motion captions: F1 {_fmt(summary['motion_caption_validation_f1'])} on the validation motion "
                  "captions (the step named right, at its end)."]
    lines += ["", "Fixed-time baseline (chosen on validation): "
              + "; ".join(f"{t} at {c['time']:g} s `{c['answer']}`" for t, c in summary["baseline_choice"].items()), "",
              *([("GRPO started from: " + ", ".join(f"{m} ← {src}" for m, src in summary["grpo_starts"].items())), ""]
                if summary.get("grpo_starts") else []),
              "Validation W-Avg F1 (model selection): "
              + ", ".join(f"{m} {_fmt(v)}" for m, v in summary["validation_w_avg_f1"].items())
              + f" → final model **{summary['final_model']}**.", "",
              "Stage wall times (s): " + ", ".join(f"{k} {v:g}" for k, v in summary["timings_s"].items()), ""]
    return "\n".join(lines)


def _run_label(settings: dict) -> str:
    """``seed S``, plus what differs from the default budget (e.g. ``sft-steps 500``), or from the plain
    recipe when that is shorter (``plain recipe, control-first-steps 200``)."""
    default, stored = asdict(QUICK if settings.get("quick") else FULL), stored_budget(settings)
    bases = {"": default, "plain recipe": {**default, **PLAIN_RECIPE}}
    name, base = min(bases.items(), key=lambda kv: sum(stored.get(k, v) != v for k, v in kv[1].items()))
    changed = [f"{k.replace('_', '-')} {stored[k]}" for k, v in base.items() if stored.get(k, v) != v]
    return ", ".join([f"seed {settings['seed']}", *([name] if name else []), *changed])


def compare_runs(run_dirs: list[Path]) -> str:
    """One markdown table of several finished runs (e.g. seeds): test W-Avg F1, shuffled W-Avg, tasks
    where the model works, control F1, validation W-Avg, per run and the mean — how far one seed's
    claims (orderings, "works") can be trusted."""
    summaries = []
    for d in run_dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: finish `streampro reproduce --out {d}` first")
        summaries.append(json.loads(path.read_text()))
    names = [_run_label(s["settings"]) for s in summaries]
    models = [m for m in summaries[0]["models"] if all(m in s["models"] for s in summaries)]
    # A mean over runs of different budgets would mix two recipes: then the runs are only shown side by side.
    budgets = {json.dumps([stored_budget(s["settings"]), s["settings"].get("quick")], sort_keys=True)
               for s in summaries}
    with_mean = len(budgets) == 1

    def mean(values: list) -> str:
        values = [v for v in values if v is not None]
        return _fmt(sum(values) / len(values)) if values else "–"

    def table(title: str, value) -> list[str]:
        head = names + ["mean"] * with_mean
        lines = [f"### {title}", "", "| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        for model in ["fixed-time baseline", *models]:
            values = [value(s, model) for s in summaries]
            if all(v is None for v in values):
                continue
            cells = [v if isinstance(v, str) else _fmt(v) for v in values]
            numeric = [v for v in values if not isinstance(v, str)]
            lines.append(f"| {model} | " + " | ".join(cells + [mean(numeric)] * with_mean) + " |")
        return lines + [""]

    def works(s: dict, model: str):
        w = s["works"].get(model)
        return None if w is None else f"{sum(w.values())} ({' '.join(t for t, ok in w.items() if ok) or '–'})"

    lines = ["# StreamPro-Synth reproduction: runs side by side (test split, exact judge, ×100)", "",
             "Runs: " + ", ".join(f"{n} = `{d}`" for n, d in zip(names, run_dirs)), "",
             *([] if with_mean else ["The runs' budgets differ, so there is no mean column.", ""])]
    lines += table("Test W-Avg F1", lambda s, m: s["rows"][m]["w_avg_f1"])
    lines += table("Test W-Avg F1, frames shuffled",
                   lambda s, m: s["rows"].get(f"{m} (shuffled frames)", {}).get("w_avg_f1"))
    lines += table("Tasks where the model works (beats the baseline, loses under shuffling)", works)
    lines += table("Control task F1 (not in W-Avg)", lambda s, m: (s.get("control_f1") or {}).get(m))
    lines += table("Validation W-Avg F1 (model selection)", lambda s, m: s["validation_w_avg_f1"].get(m))
    lines += ["Final model (chosen on validation): "
              + "; ".join(f"{n}: {s['final_model']}" for n, s in zip(names, summaries)), ""]
    return "\n".join(lines)


def plot_task_f1(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from streampro.metrics import TASKS

    models = summary["models"]
    names = ["fixed-time baseline", *models]
    control = summary.get("control_f1")
    labels = list(TASKS) + (["control (not in W-Avg)"] if control else [])
    x = np.arange(len(labels))
    width = 0.8 / len(names)

    def values(name: str) -> list[float]:
        row = summary["rows"][name]
        return [row.get(f"{t}_f1") or 0.0 for t in TASKS] + ([control[name] or 0.0] if control else [])

    fig, axes = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    for i, name in enumerate(names):
        axes[0].bar(x + (i - len(names) / 2 + 0.5) * width, values(name), width, label=name)
    for i, model in enumerate(models):
        drop = [a - b for a, b in zip(values(model), values(f"{model} (shuffled frames)"))]
        axes[1].bar(x + (i - len(models) / 2 + 0.5) * width, drop, width, label=model, color=f"C{i + 1}")
    axes[0].set_ylabel("F1 (test)")
    axes[0].set_title("Per-task StreamPro-F1 on StreamPro-Synth test (exact judge)")
    axes[0].legend(fontsize=8, ncol=5)
    axes[1].axhline(SHUFFLE_DROP_POINTS, color="gray", lw=0.8, ls="--")
    axes[1].set_ylabel("F1 − F1 shuffled")
    axes[1].set_title("Shuffled-frames control: how much F1 each model loses when frames are shuffled")
    axes[1].set_xticks(x, labels)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_timelines(run: Run, summary: dict, path: Path) -> None:
    """One test clip per task: ground-truth windows, t*, and each model's (and the baseline's) responses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from streampro.metrics import TASK_SPECS, TASKS

    test = _read_jsonl(run.data / "bench" / "test.jsonl")
    preds = {m: {r["id"]: r for r in _read_jsonl(run.eval_dir(m, "test") / "predictions.jsonl")} for m in run.models}
    clips = [next(r for r in test if r["task"] == t) for t in TASKS if any(r["task"] == t for r in test)]
    lanes = ["baseline", *run.models]
    fig, axes = plt.subplots(len(clips), 1, figsize=(11, 1.25 * len(clips) + 0.6), squeeze=False)
    for ax, ref in zip(axes[:, 0], clips):
        spec = TASK_SPECS[ref["task"]]
        for a in ref["answers"]:
            t_star = a.get("time", a.get("end"))
            lo = (a["start"] if "start" in a and ref["task"] in ("EU", "TP") else t_star) - spec.before
            hi = (a.get("end", t_star)) + spec.after
            ax.axvspan(lo, hi, color="tab:green", alpha=0.15)
            ax.axvline(t_star, color="tab:green", lw=1)
        ax.axvline(ref["question_time"], color="black", lw=0.8, ls=":")
        choice = summary["baseline_choice"][ref["task"]]
        ax.plot([choice["time"]], [0], "k|", ms=10, mew=2)
        for i, m in enumerate(run.models, 1):
            record = preds[m][ref["id"]]
            times = [p["time"] for p in record["predictions"]]
            ax.plot(times, [i] * len(times), "o", ms=5, color=f"C{i}")
        ax.set_yticks(range(len(lanes)), lanes, fontsize=7)
        ax.set_xlim(0, ref["duration"] + 1)
        ax.set_ylim(-0.7, len(lanes) - 0.3)
        ax.set_title(f"{ref['id']} ({ref['task']}): {ref['question'][:90]}", fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("time (s)  — green: matching windows and t*; dotted: question; marks: responses")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run: Run) -> dict:
    baseline = fixed_time_baseline(run)
    summary = collect(run, baseline)
    (run.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run.out / "results.md").write_text(format_results(summary))
    plot_task_f1(summary, run.out / "plots" / "reproduce_task_f1.png")
    plot_timelines(run, summary, run.out / "plots" / "reproduce_timelines.png")
    return summary


# --------------------------------------------------------------------------------------------
# Embedded default model and demo clips
# --------------------------------------------------------------------------------------------


def install_assets(run: Run, summary: dict, assets: Path = ASSETS_DIR, num_clips: int = 5) -> None:
    """Copy the final model (clean re-save) and a few test clips with their references into ``assets``.

    The demo clips are a showcase, chosen after the fact: for the (at most) ``num_clips`` tasks where
    the final model has the highest non-zero test F1, that task's test clip with the model's best F1.
    """
    from streampro.loading import load_model_and_processor

    final = summary["final_model"]
    model_dir = assets / "streampro-tiny-synth"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model, processor = load_model_and_processor(run.model_dir(final), device="cpu")
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    (model_dir / "PROVENANCE.json").write_text(json.dumps({
        "source": f"streampro reproduce ({final}; {_run_label(summary['settings'])}), chosen by validation W-Avg F1",
        "settings": {**summary["settings"], "budget": stored_budget(summary["settings"])},  # every field, old runs too
        "validation_w_avg_f1": summary["validation_w_avg_f1"],
        "test_w_avg_f1": summary["rows"][final]["w_avg_f1"]}, indent=2) + "\n")
    report = json.loads((run.eval_dir(final, "test") / "report.json").read_text())
    scores = {s["id"]: s.get("f1", 0.0) for s in report["per_sample"]}
    results = summary["rows"][final]
    scored = [t for t in _tasks(results) if results[f"{t}_f1"] > 0]  # a task the model fails shows nothing
    tasks = sorted(scored, key=lambda t: -results[f"{t}_f1"])[:num_clips]
    refs = _read_jsonl(run.data / "bench" / "test.jsonl")
    demo = assets / "demo"
    if demo.exists():
        shutil.rmtree(demo)
    (demo / "videos").mkdir(parents=True)
    chosen = []
    for task in tasks:
        ref = max((r for r in refs if r["task"] == task), key=lambda r: scores.get(r["id"], 0.0))
        shutil.copy2(run.data / ref["video"], demo / "videos" / Path(ref["video"]).name)
        chosen.append({**ref, "video": f"videos/{Path(ref['video']).name}"})
    with (demo / "references.jsonl").open("w", encoding="utf-8") as f:
        for ref in chosen:
            f.write(json.dumps(ref) + "\n")
    logger.info("installed %s and %d demo clips into %s", final, len(chosen), assets)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="Run folder (created; an existing one is resumed).")
    parser.add_argument("--quick", action="store_true", help="Minutes-long smoke run (tiny data, few steps; CI).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data, the initial weights and training.")
    parser.add_argument("--skip-grpo", action="store_true", help="Stop after SFT (the table then has no GRPO row).")
    parser.add_argument("--sft-steps", type=int, help="Override the SFT steps of the budget (same for every loss).")
    parser.add_argument("--grpo-steps", type=int, help="Override the GRPO steps of the budget.")
    parser.add_argument("--size", type=int,
                        help="Frame side in px (default: the budget's, 56 = 4 image tokens per frame; 84 = 9, one "
                             "per cell of the 3x3 grid the shapes move on).")
    parser.add_argument("--extra-train", type=int, dest="extra_train_clips",
                        help="Train on this many more clips of the seven tasks, drawn after the benchmark's "
                             "(validation and test unchanged; default: the budget's).")
    parser.add_argument("--extra-validation", type=int, dest="extra_validation_clips",
                        help="Validate (choose the final model and the fixed-time baseline) on this many more clips "
                             "of the seven tasks, drawn after the extra training clips (training and test "
                             "unchanged; default: the budget's).")
    parser.add_argument("--tokenizer", choices=("v1", "v2"),
                        help="The tiny tokenizer (default: the budget's, v2 = Synth words whole, digits split like "
                             "Qwen2's; v1 = the first runs').")
    parser.add_argument("--group-by-length", action=argparse.BooleanOptionalAction,
                        help="Batch SFT records of similar length (Trainer's group_by_length sampler on num_turns): "
                             "less padding per step, but it ruined the caption stage (default: off).")
    parser.add_argument("--plain", action="store_true",
                        help="The plain recipe of the first runs: no caption stage, no control-first curriculum, "
                             "the tower's features as they are and the 200-token system prompt; the options "
                             "below apply on top of it (docs/reproduce.md, 'Earlier recipes').")
    parser.add_argument("--caption-steps", type=int,
                        help="Pretraining: first train this many steps on scene captions (the tower fixed, as "
                             "in every stage), then the rest from there (default: the budget's, 0 = off).")
    parser.add_argument("--motion-captions", type=int, dest="motion_caption_clips",
                        help="Also train the caption stage on this many motion captions (one shape makes one "
                             "step, named at its end in EU's words; default: the budget's, 2000; 0 = still "
                             "scenes only; none without the caption stage).")
    parser.add_argument("--control-first-steps", type=int,
                        help="Curriculum: then train this many steps on the control task alone (shared by the "
                             "three losses), and each loss from there (default: the budget's, 0 = off).")
    parser.add_argument("--control-first-loss", choices=LOSSES,
                        help="The loss of the control-first stage (default: the budget's, cb_stream).")
    parser.add_argument("--centre-image-features", action=argparse.BooleanOptionalAction,
                        help="Init: shift and scale the projector's output layer so the training frames' image "
                             "features have mean 0 and norm 1 (default: on; docs/reproduce.md, 'Reading the "
                             "frames').")
    parser.add_argument("--short-system-prompt", action=argparse.BooleanOptionalAction,
                        help="Give the tiny model a one-sentence system prompt instead of the 200-token default "
                             "(default: on).")
    parser.add_argument("--jobs", "--sft-jobs", type=int, default=1, dest="jobs",
                        help="Run independent stages (the three SFT losses, the two GRPO runs, the evaluations) in "
                             "this many parallel processes, one torch thread each. On 2 cores, 3 is fastest.")
    parser.add_argument("--compare", nargs="+", type=Path, metavar="RUN",
                        help="Only tabulate finished runs (e.g. two seeds) side by side; writes --out/compare.md "
                             "when --out is given, prints the table either way.")
    parser.add_argument("--install-assets", action="store_true",
                        help="Copy the final model (chosen on validation) and demo clips into streampro/assets/.")


def run(args: argparse.Namespace) -> int:
    if args.compare:
        table = compare_runs(args.compare)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "compare.md").write_text(table)
        print(table)
        return 0
    if args.out is None:
        raise SystemExit("streampro reproduce: --out DIR is required (or --compare RUN ... to tabulate runs)")
    budget = QUICK if args.quick else FULL
    if args.plain:
        budget = replace(budget, **PLAIN_RECIPE)
    if args.sft_steps is not None:
        budget = replace(budget, sft_steps=args.sft_steps)
    if args.grpo_steps is not None:
        budget = replace(budget, grpo_steps=args.grpo_steps)
    if args.size is not None:
        if not (16 <= args.size <= 112) or args.size % 28:
            raise SystemExit("streampro reproduce: --size must be a multiple of 28 px in [28, 112] (two 14-px patches "
                             "per merged image token)")
        budget = replace(budget, size=args.size)
    if args.group_by_length is not None:
        budget = replace(budget, group_by_length=args.group_by_length)
    if args.tokenizer is not None:
        budget = replace(budget, tokenizer=args.tokenizer)
    if args.extra_train_clips is not None:
        if args.extra_train_clips < 0:
            raise SystemExit("streampro reproduce: --extra-train must be >= 0")
        budget = replace(budget, extra_train_clips=args.extra_train_clips)
    if args.extra_validation_clips is not None:
        if args.extra_validation_clips < 0:
            raise SystemExit("streampro reproduce: --extra-validation must be >= 0")
        budget = replace(budget, extra_validation_clips=args.extra_validation_clips)
    if args.control_first_steps is not None:
        if args.control_first_steps < 0 or (args.control_first_steps and not budget.control_clips):
            raise SystemExit("streampro reproduce: --control-first-steps must be >= 0 and needs control clips")
        budget = replace(budget, control_first_steps=args.control_first_steps)
    if args.control_first_loss is not None:
        if not budget.control_first_steps:
            raise SystemExit("streampro reproduce: --control-first-loss only applies to the curriculum stage; "
                             "add --control-first-steps N (N > 0)")
        budget = replace(budget, control_first_loss=args.control_first_loss)
    if args.caption_steps is not None:
        if args.caption_steps < 0:
            raise SystemExit("streampro reproduce: --caption-steps must be >= 0")
        budget = replace(budget, caption_steps=args.caption_steps)
        if not args.caption_steps and args.motion_caption_clips is None:  # no caption stage: no motion captions
            budget = replace(budget, motion_caption_clips=0)
    if args.motion_caption_clips is not None:
        if args.motion_caption_clips < 0 or (args.motion_caption_clips and not budget.caption_steps):
            raise SystemExit("streampro reproduce: --motion-captions must be >= 0 and needs the caption stage "
                             "(--caption-steps N, N > 0)")
        budget = replace(budget, motion_caption_clips=args.motion_caption_clips)
    if args.centre_image_features is not None:
        budget = replace(budget, centre_image_features=args.centre_image_features)
    if args.short_system_prompt is not None:
        budget = replace(budget, short_system_prompt=args.short_system_prompt)
    models = tuple(m for m in MODELS if not (args.skip_grpo and m in GRPO_MODELS))
    start = time.monotonic()
    r = Run(args.out, budget, args.seed, args.quick, models)
    build_data(r)
    build_init(r)
    if r.budget.caption_steps:
        train_captions(r)
        for split in caption_splits(r):
            evaluate(r, "captions", split, max_new_tokens=CAPTION_MAX_NEW_TOKENS)
    if r.budget.control_first_steps:
        train_control_first(r)
    run_stages(r, args.jobs, "sft", [(loss,) for loss in LOSSES])
    if "grpo" in r.models:
        run_stages(r, args.jobs, "grpo", [("grpo", "sft-cb_stream"), ("grpo-best", best_sft_model(r, args.jobs))])
    splits = [("validation",), ("test",), ("test", True)]
    if r.budget.control_clips:
        splits += [("control_test",), ("control_test", True)]
    run_stages(r, args.jobs, "evaluate", [(m, *split) for m in r.models for split in splits])
    summary = write_report(r)
    if args.install_assets:
        install_assets(r, summary)
    print(format_results(summary))
    print(f"results: {args.out / 'results.md'}, {args.out / 'results.json'}; plots: {args.out / 'plots'}")
    print(f"wall time of this invocation: {time.monotonic() - start:.0f} s")
    return 0
