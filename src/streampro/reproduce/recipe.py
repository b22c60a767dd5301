"""The reproduce recipe: every setting of a ``streampro reproduce`` run, as data.

A recipe is a YAML file whose keys are exactly the fields of :class:`Recipe`
(``recipes/reproduce/default.yaml``, ``quick.yaml``, ``paper_stages.yaml``); unknown or missing keys
are refused. ``--recipe NAME`` picks a file of ``recipes/reproduce/`` by its stem, ``--recipe PATH``
any file, and ``--set field=value`` changes single fields on top of it.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import yaml

from streampro.errors import UserError

LOSSES = ("ce", "focal", "cb_stream")
# The recipe files shipped with the package (``recipes/reproduce/`` in the repository).
RECIPES_DIR = Path(str(resources.files("streampro.recipes") / "reproduce"))
RECIPE_PREFIX = "recipes/reproduce"  # how a run folder names a shipped recipe file
# Fields added after run folders were first written, with the value that behaves as the code did before
# them: a run folder's stored recipe without one of these still resumes (``load_recipe(..., stored=True)``).
ADDED_FIELDS = {"silence_factor": 1.0, "eval_batch_streams": 1}


@dataclass(frozen=True)
class Recipe:
    """Everything that sets what a run trains and costs; the same for the three SFT losses."""

    # --- data (``streampro data synth``) ---
    n_clips: int  # clips of the 7 tasks, split 80 / 10 / 10 train / validation / test per task
    control_clips: int  # the control task "the screen changes colour": trained on, reported apart
    extra_train_clips: int  # more training clips of the 7 tasks, drawn after n_clips (listed last)
    extra_validation_clips: int  # more validation clips, drawn after those: a steadier model choice
    size: int  # frame side in px, a multiple of 28: 84 px = 9 image tokens, one per cell of the 3x3 grid
    # Longer streams with the same events: about this many times the silent turns (``data synth
    # --silence-factor``, docs/data.md §5); 1 = the standard Synth. The imbalance CB-Stream re-weights.
    silence_factor: float
    # --- the tiny Qwen2.5-VL (``streampro.backbones.TINY_SIZES``'s keys, every one) ---
    model_sizes: dict[str, int]
    # --- init ---
    # Shift and scale the projector's output layer so the training frames' image features have mean 0
    # and mean norm 1 (a data-dependent init): a random tower's features share one large direction.
    centre_image_features: bool
    # SHORT_SYSTEM_PROMPT instead of the 200-token default, which dilutes a 3-layer model's attention.
    short_system_prompt: bool
    # The random vision tower, projector included, stays fixed in every stage (a random-feature
    # encoder): trained at lr 1e-3 its features collapse to one direction and the frames are ignored.
    freeze_vision: bool
    # --- caption stage (0 steps = off): CE on scene captions, so the language model reads the frames ---
    caption_steps: int
    caption_clips: int  # still scenes of 1-3 shapes and their description, 80 / 10 / 10
    caption_batch: int
    motion_caption_clips: int  # one shape makes one step, named in EU's words; needs caption_steps > 0
    # --- control-first curriculum (0 steps = off): the control task alone, every loss starts there ---
    control_first_steps: int
    control_first_loss: str
    # --- SFT (each of the three losses) ---
    sft_steps: int
    sft_batch: int
    sft_lr: float
    sft_warmup: int
    # Batches of records of similar length (Trainer's group_by_length sampler on num_turns) in every SFT
    # stage: less padding, but the caption stage's batches then alternate between still and motion clips.
    group_by_length: bool
    # --- GRPO (both runs) ---
    grpo_steps: int  # 0 = no GRPO stages: the three SFT models only
    grpo_generations: int
    grpo_batch: int  # completions per step (samples x generations)
    grpo_lr: float
    grpo_max_new_tokens: int
    # --- evaluation ---
    eval_max_new_tokens: int
    # Streams decoded together in one batched forward per frame (``evaluate --batch-streams``); 1 = one by one.
    eval_batch_streams: int

    def __post_init__(self):
        from streampro.backbones import TINY_SIZES
        from streampro.dataset_scripts.synth import MAX_SILENCE_FACTOR

        if set(self.model_sizes) != set(TINY_SIZES):
            raise ValueError(f"model_sizes must have exactly the keys {sorted(TINY_SIZES)}, "
                             f"got {sorted(self.model_sizes)}")
        if not (28 <= self.size <= 112) or self.size % 28:
            raise ValueError(f"size must be a multiple of 28 px in [28, 112] (two 14-px patches per merged "
                             f"image token), got {self.size}")
        counts = ("n_clips", "control_clips", "extra_train_clips", "extra_validation_clips", "caption_steps",
                  "caption_clips", "motion_caption_clips", "control_first_steps", "sft_steps", "grpo_steps")
        for name in counts:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.silence_factor <= MAX_SILENCE_FACTOR:
            raise ValueError(f"silence_factor must be in [1, {MAX_SILENCE_FACTOR:g}], got {self.silence_factor}")
        if self.eval_batch_streams < 1:
            raise ValueError(f"eval_batch_streams must be >= 1, got {self.eval_batch_streams}")
        if self.control_first_loss not in LOSSES:
            raise ValueError(f"control_first_loss must be one of {', '.join(LOSSES)}, got {self.control_first_loss!r}")
        if self.control_first_steps and not self.control_clips:
            raise ValueError("control_first_steps > 0 needs control clips (control_clips > 0)")
        if self.motion_caption_clips and not self.caption_steps:
            raise ValueError("motion_caption_clips > 0 needs the caption stage (caption_steps > 0)")


def _check_type(name: str, value, kind) -> object:
    """``value`` as the field's type; ints are accepted for floats, nothing else is converted."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(kind) is dict:
        if isinstance(value, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
            return dict(value)
        raise ValueError(f"{name} must be a mapping of size names to integers, got {value!r}")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{name} must be {kind.__name__}, got {value!r}")
    return value


def recipe_from_dict(values: dict) -> Recipe:
    """A :class:`Recipe` from a mapping with exactly its fields (ValueError naming the key otherwise)."""
    hints = typing.get_type_hints(Recipe)
    names = [f.name for f in fields(Recipe)]
    unknown = [k for k in values if k not in hints]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (a recipe's keys are: {', '.join(names)})")
    missing = [k for k in names if k not in values]
    if missing:
        raise ValueError(f"missing key {missing[0]!r} (every field is required: {', '.join(missing)})")
    return Recipe(**{k: _check_type(k, values[k], hints[k]) for k in names})


def recipe_path(name_or_path: str | Path) -> Path:
    """A shipped recipe's file by its stem (``default``, ``quick``), or the path as given."""
    text = str(name_or_path)
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        return RECIPES_DIR / f"{text}.yaml"
    return Path(text)


def recipe_reference(path: Path) -> str:
    """How a run names its recipe file: ``recipes/reproduce/NAME.yaml`` for a shipped one, else the path."""
    path = Path(path).resolve()
    return f"{RECIPE_PREFIX}/{path.name}" if path.parent == RECIPES_DIR.resolve() else str(path)


def load_recipe(name_or_path: str | Path, stored: bool = False) -> Recipe:
    """Parse a recipe file strictly; a missing file, bad YAML or bad key is a UserError naming the file.

    ``stored``: a run folder's ``recipe.yaml``, written before the fields of :data:`ADDED_FIELDS`
    existed, may lack them; they read as their old behaviour.
    """
    path = recipe_path(name_or_path)
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
        raise UserError(f"recipe {name_or_path}: {path} not found",
                        f"name a shipped recipe ({shipped}) or the path of a recipe YAML file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})", "fix the file's syntax") from e
    if not isinstance(values, dict):
        raise UserError(f"{path}: a recipe is a mapping of field: value", "write one `field: value` per line")
    if stored:
        values = {**ADDED_FIELDS, **values}
    try:
        return recipe_from_dict(values)
    except ValueError as e:
        raise UserError(f"{path}: {e}", f"edit {path.name} (docs/reproduce.md lists every field)") from e


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """``field=value`` changes (``--set``, all at once) applied to ``recipe``; each value is read as YAML
    (``5``, ``1e-3``, ``false``) and must have the field's type."""
    hints = typing.get_type_hints(Recipe)
    changes = {}
    for text in overrides:
        name, sep, raw = text.partition("=")
        if not sep or name not in hints:
            raise UserError(f"--set {text}: expected FIELD=VALUE with a recipe field",
                            f"use one of: {', '.join(f.name for f in fields(Recipe))}")
        value = yaml.safe_load(raw)
        if hints[name] is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        try:
            changes[name] = _check_type(name, value, hints[name])
        except ValueError as e:
            raise UserError(f"--set {text}: {e}", "give a value of the field's type") from e
    try:
        return recipe_from_dict({**asdict(recipe), **changes})
    except ValueError as e:
        given = " ".join(f"--set {t}" for t in overrides)
        raise UserError(f"{given}: {e}", "change the fields that go together in one command (several --set)") from e


def recipe_yaml(recipe: Recipe, header: str = "") -> str:
    """The recipe as YAML, every field, in declaration order (what a run folder's ``recipe.yaml`` holds)."""
    return header + yaml.safe_dump(asdict(recipe), sort_keys=False)


def changed_fields(recipe: Recipe, base: Recipe) -> dict:
    """The fields of ``recipe`` that differ from ``base`` (e.g. ``{"sft_steps": 5}``)."""
    theirs = asdict(base)
    return {k: v for k, v in asdict(recipe).items() if theirs[k] != v}


