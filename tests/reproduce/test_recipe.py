"""Every reproduce recipe parses strictly (its keys are exactly the Recipe fields); the command resolves
--recipe / --quick / --set into one recipe and refuses a bad one with one error line."""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest
import yaml

from streampro.cli import main
from streampro.errors import UserError
from streampro.reproduce import Recipe, load_recipe
from streampro.reproduce.recipe import RECIPES_DIR, apply_overrides, recipe_yaml

REPO_RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "reproduce"
RECIPE_FILES = sorted(REPO_RECIPES.glob("*.yaml"))
FIELDS = [f.name for f in fields(Recipe)]


def test_the_expected_recipes_exist_and_ship_with_the_package():
    assert {p.stem for p in RECIPE_FILES} == {"default", "quick", "paper_stages", "imbalance"}
    assert RECIPES_DIR.resolve() == REPO_RECIPES  # `--recipe NAME` reads these files (importlib.resources)


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.name)
def test_recipe_parses_strictly(path):
    raw = yaml.safe_load(path.read_text())
    assert list(raw) == FIELDS  # every field, in declaration order, nothing else
    assert asdict(load_recipe(path)) == raw
    assert load_recipe(path.stem) == load_recipe(path)  # by name


def test_the_quick_and_paper_stages_recipes_are_what_they_say():
    default, quick, paper = (load_recipe(n) for n in ("default", "quick", "paper_stages"))
    assert quick.n_clips < default.n_clips and quick.sft_steps < default.sft_steps
    assert quick.model_sizes["text_hidden"] < default.model_sizes["text_hidden"]
    # The paper's stages alone: no caption stage, no curriculum, no init options, the benchmark's clips only.
    assert paper.caption_steps == paper.control_first_steps == paper.motion_caption_clips == 0
    assert not paper.centre_image_features and not paper.short_system_prompt
    assert paper.extra_train_clips == paper.extra_validation_clips == 0
    assert (paper.sft_steps, paper.grpo_steps, paper.model_sizes) == (default.sft_steps, default.grpo_steps,
                                                                     default.model_sizes)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda raw: {**raw, "loss_typo": "ce"}, "bad.yaml: unknown key 'loss_typo'"),
    (lambda raw: {k: v for k, v in raw.items() if k != "sft_steps"}, "bad.yaml: missing key 'sft_steps'"),
    (lambda raw: {**raw, "sft_steps": "many"}, "sft_steps must be int, got 'many'"),
    (lambda raw: {**raw, "group_by_length": 1}, "group_by_length must be bool"),
    (lambda raw: {**raw, "model_sizes": {**raw["model_sizes"], "text_width": 8}}, "model_sizes must have exactly"),
    (lambda raw: {**raw, "size": 70}, "size must be a multiple of 28"),
    (lambda raw: {**raw, "control_first_loss": "mse"}, "control_first_loss must be one of ce, focal, cb_stream"),
])
def test_a_bad_recipe_file_is_refused_naming_file_and_key(tmp_path, edit, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(edit(yaml.safe_load((REPO_RECIPES / "quick.yaml").read_text()))))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")) as info:
        load_recipe(bad)
    assert str(bad) in info.value.what


def test_a_missing_recipe_names_the_shipped_ones():
    with pytest.raises(UserError, match="recipe nonesuch") as info:
        load_recipe("nonesuch")
    assert "default, imbalance, paper_stages, quick" in info.value.fix


def test_overrides_are_read_as_the_field_type():
    quick = load_recipe("quick")
    assert apply_overrides(quick, ["sft_lr=1e-4"]).sft_lr == pytest.approx(1e-4)  # YAML 1.1: "1e-4" is a string
    assert apply_overrides(quick, ["sft_steps=7", "short_system_prompt=false"]) == replace(
        quick, sft_steps=7, short_system_prompt=False)
    with pytest.raises(UserError, match="--set sft_steps=7.5: sft_steps must be int"):
        apply_overrides(quick, ["sft_steps=7.5"])
    # Fields that go together change together: validated once, after every --set.
    assert apply_overrides(quick, ["caption_steps=0", "motion_caption_clips=0"]).caption_steps == 0


def test_recipe_yaml_round_trips(tmp_path):
    recipe = replace(load_recipe("default"), grpo_lr=3e-5)
    (tmp_path / "r.yaml").write_text(recipe_yaml(recipe, "# a header\n"))
    assert load_recipe(tmp_path / "r.yaml") == recipe


def test_the_command_resolves_recipe_quick_and_set(tmp_path, monkeypatch):
    import streampro.reproduce as R

    asked = []

    def stop(out, recipe, seed, source):
        asked.append((recipe, source))
        raise RuntimeError("stopped")

    monkeypatch.setattr(R, "Run", stop)
    for argv in (["--quick"], ["--recipe", "paper_stages", "--set", "control_first_steps=200",
                               "--set", "control_first_loss=cb_stream"],
                 ["--set", "caption_steps=0", "--set", "motion_caption_clips=0"],
                 ["--recipe", str(REPO_RECIPES / "quick.yaml")]):
        with pytest.raises(RuntimeError, match="stopped"):
            main(["reproduce", "--out", str(tmp_path / "run"), *argv])
    quick, paper, default = (load_recipe(n) for n in ("quick", "paper_stages", "default"))
    assert asked[0] == (quick, "quick")
    assert asked[1] == (replace(paper, control_first_steps=200, control_first_loss="cb_stream"), "paper_stages")
    assert asked[2] == (replace(default, caption_steps=0, motion_caption_clips=0), "default")
    assert asked[3][0] == quick


@pytest.mark.parametrize(("argv", "message"), [
    (["--quick", "--set", "size=70"], "--set size=70: size must be a multiple of 28"),
    (["--quick", "--set", "extra_train_clips=-7"], "extra_train_clips must be >= 0"),
    (["--set", "caption_steps=0"], "motion_caption_clips > 0 needs the caption stage"),
    (["--set", "control_clips=0"], "control_first_steps > 0 needs control clips"),
    (["--quick", "--set", "sft_stepz=5"], "--set sft_stepz=5: expected FIELD=VALUE with a recipe field"),
    (["--quick", "--recipe", "default"], "--quick and --recipe default both name a recipe"),
    (["--recipe", "nonesuch.yaml"], "nonesuch.yaml not found"),
])
def test_a_bad_recipe_on_the_command_line_is_one_error_line(tmp_path, capsys, argv, message):
    assert main(["reproduce", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("streampro reproduce: error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_out_is_required(capsys):
    assert main(["reproduce", "--quick"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err


def test_a_run_folder_from_before_added_fields_resumes(tmp_path):
    """A stored recipe.yaml without the fields added since reads them as the old behaviour; a new recipe
    file must still list every field."""
    from streampro.reproduce import Run
    from streampro.reproduce.recipe import ADDED_FIELDS

    recipe = load_recipe("quick")
    Run(tmp_path, recipe, 0, "quick")
    stored = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    for name in ADDED_FIELDS:
        assert stored.pop(name) == ADDED_FIELDS[name]  # the quick recipe keeps the old behaviour
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    assert Run(tmp_path, recipe, 0, "quick").recipe == recipe
    with pytest.raises(UserError, match="missing key 'silence_factor'"):
        load_recipe(tmp_path / "recipe.yaml")
    changed = replace(recipe, eval_batch_streams=4)
    with pytest.raises(UserError, match="eval_batch_streams 1, not 4"):
        Run(tmp_path, changed, 0, "quick")
