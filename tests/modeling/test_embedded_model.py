"""The embedded default model (``streampro/assets/streampro-tiny-synth``) and the demo clips shipped with it."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from streampro.metrics import validate_reference

from streampro.assets import DEMO_DIR, demo_references
from streampro.loading import EMBEDDED_MODEL_DIR, load_model_and_processor
from streampro.video import iter_video_frames


def test_embedded_model_loads_strictly_and_is_small():
    model, processor = load_model_and_processor(None, device="cpu")
    # Strict: every saved tensor is a model weight and every model weight was saved.
    saved = load_file(EMBEDDED_MODEL_DIR / "model.safetensors")
    assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in model.state_dict().values())
    assert (EMBEDDED_MODEL_DIR / "model.safetensors").stat().st_size < 20 * 2**20  # a few MB
    assert processor.silence_token_id == model.config.silence_token_id
    assert processor.response_token_id == model.config.response_token_id


def test_demo_references_point_at_shipped_clips():
    refs = demo_references()
    assert 3 <= len(refs) <= 5
    for ref in refs:
        validate_reference(ref)
        assert not ref["video"].startswith("/") and (DEMO_DIR / ref["video"]).is_file()


def test_embedded_model_streams_a_demo_clip():
    model, processor = load_model_and_processor(None, device="cpu")
    ref = demo_references()[0]
    frames = list(iter_video_frames(DEMO_DIR / ref["video"], fps=1.0))
    events = list(model.generate_stream(frames, ref["question"], processor=processor,
                                        question_time=ref["question_time"], max_new_tokens=24))
    assert len(events) == len(frames)
    assert all(e.decision in ("silence", "response") for e in events)
    asked = [e for e in events if e.p_response is not None]
    assert asked and all(0.0 <= e.p_response <= 1.0 for e in asked)
    assert any(e.decision == "response" and e.text for e in events)  # the trained model answers on its demo clip


@pytest.mark.parametrize("argv", [["demo"], ["demo", "--list"]])
def test_demo_command_runs_offline(argv, capsys):
    from streampro.cli import main

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert demo_references()[0]["id"] in out


def test_provenance_names_a_recipe_file_that_parses_and_the_validation_choice():
    """PROVENANCE.json says how the embedded model was made: a recipe file of the repository, a seed and the
    model chosen by validation W-Avg (not that the recipe equals today's default: that may change)."""
    from pathlib import Path

    from streampro.reproduce import load_recipe

    prov = json.loads((EMBEDDED_MODEL_DIR / "PROVENANCE.json").read_text())
    assert prov["recipe"].startswith("recipes/reproduce/")
    recipe_file = Path(__file__).resolve().parents[2] / prov["recipe"]
    assert recipe_file.is_file()
    load_recipe(recipe_file)  # parses strictly
    assert isinstance(prov["settings"]["seed"], int)
    final = prov["source"].removeprefix("streampro reproduce (").split(";")[0]
    validation = prov["validation_w_avg_f1"]
    assert "chosen by validation" in prov["source"] and final == max(validation, key=validation.get)
    assert isinstance(prov["test_w_avg_f1"], float)


@pytest.mark.parametrize("name", ["configuration_streampro", "modeling_streampro", "processing_streampro",
                                  "time_streampro"])
def test_embedded_remote_code_matches_the_package(name):
    """`trust_remote_code` loads of the embedded checkpoint run these copies: they must not drift."""
    from pathlib import Path

    import streampro.modeling_streampro as source

    shipped = (EMBEDDED_MODEL_DIR / f"{name}.py").read_text()
    current = (Path(source.__file__).parent / f"{name}.py").read_text()
    assert shipped == current, (
        f"{EMBEDDED_MODEL_DIR / name}.py differs from modeling_streampro/{name}.py; copy the package's "
        "file over it (the weights do not change)"
    )
