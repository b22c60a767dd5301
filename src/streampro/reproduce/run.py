"""The run folder: the recipe it runs (``recipe.yaml``, ``run.json``), its stage timings, its paths.

``recipe.yaml`` holds the resolved recipe (every field, ``--set`` changes applied) and ``run.json`` the
seed and the recipe file it came from. A resume reads those two files and nothing else: asking for
another recipe or seed in the same folder is refused.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from streampro.errors import UserError
from streampro.reproduce.recipe import (
    LOSSES,
    Recipe,
    changed_fields,
    load_recipe,
    recipe_path,
    recipe_reference,
    recipe_yaml,
)

logger = logging.getLogger(__name__)

SFT_MODELS = tuple(f"sft-{loss}" for loss in LOSSES)
GRPO_MODELS = ("grpo", "grpo-best")
MODELS = SFT_MODELS + GRPO_MODELS


class Run:
    """The output folder ``out`` of one ``recipe`` and ``seed``; ``source`` is the recipe's name or file.

    A new folder records the recipe; an existing one must hold the same recipe and seed.
    """

    def __init__(self, out: Path, recipe: Recipe, seed: int, source: str | Path):
        self.out, self.recipe, self.seed, self.source = Path(out), recipe, seed, str(source)
        self.models = MODELS if recipe.grpo_steps else SFT_MODELS  # grpo_steps 0: no GRPO stages
        self.out.mkdir(parents=True, exist_ok=True)
        recipe_file, record = self.out / "recipe.yaml", self.out / "run.json"
        if recipe_file.exists():
            stored = load_recipe(recipe_file, stored=True)
            stored_seed = json.loads(record.read_text())["seed"]
            if stored != recipe or stored_seed != seed:
                diff = [f"{k} {v}, not {getattr(recipe, k)}" for k, v in changed_fields(stored, recipe).items()]
                diff += [f"seed {stored_seed}, not {seed}"] * (stored_seed != seed)
                raise UserError(f"{self.out} holds a run of another recipe or seed ({recipe_file}, {record.name}: "
                                f"{'; '.join(diff)})", "resume with the same --recipe, --set and --seed, or pass a new --out")
        else:
            path = recipe_path(source)
            settings = {"recipe_file": recipe_reference(path), "seed": seed,
                        "changed": changed_fields(recipe, load_recipe(path))}
            record.write_text(json.dumps(settings, indent=2) + "\n")
            header = f"# streampro reproduce: the recipe of this run folder ({settings['recipe_file']}"
            header += "".join(f", {k}={v}" for k, v in settings["changed"].items()) + ")\n"
            recipe_file.write_text(recipe_yaml(recipe, header))
        self.timings_path = self.out / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}

    def settings(self) -> dict:
        """The run's record as results.json stores it: recipe file, changed fields, seed and the whole recipe."""
        return {**json.loads((self.out / "run.json").read_text()), "recipe": asdict(self.recipe)}

    @property
    def data(self) -> Path:
        return self.out / "data"

    def model_dir(self, name: str) -> Path:
        return self.out / "models" / name

    def eval_dir(self, model: str, split: str) -> Path:
        return self.out / "eval" / model / split

    def report(self, model: str, split: str) -> dict:
        """``streampro evaluate``'s report for one model on one (possibly shuffled) split."""
        return json.loads((self.eval_dir(model, split) / "report.json").read_text())

    def results(self, model: str, split: str) -> dict:
        return self.report(model, split)["results"]

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
        """Add one stage's wall time to ``timings.json`` (locked: parallel stage workers share the file)."""
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


TRAINED_MARK = "log_history.json"  # written by a training stage after its final save


def is_model(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def is_trained(path: Path) -> bool:
    """A training stage's folder holds its whole final model (its log comes after the save)."""
    return is_model(path) and (path / TRAINED_MARK).is_file()
