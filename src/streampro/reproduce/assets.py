"""Ship a run's final model and a few demo clips inside the package (``--install-assets``).

``streampro/assets/streampro-tiny-synth/`` is the model every command uses when none is given;
its ``PROVENANCE.json`` names the recipe file, the seed and the validation choice it came from.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from streampro.jsonl import read_jsonl, write_jsonl
from streampro.reproduce.report import run_label, tasks_of
from streampro.reproduce.run import Run

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"


def install_assets(run: Run, summary: dict, assets: Path = ASSETS_DIR, num_clips: int = 5) -> None:
    """Copy the final model (clean re-save) and a few test clips with their references into ``assets``.

    The demo clips are a showcase, chosen after the fact: for the (at most) ``num_clips`` tasks where
    the final model has the highest non-zero test F1, that task's test clip with the model's best F1.
    """
    from streampro.loading import load_model_and_processor
    from streampro.modelcard import write_embedded_card

    final = summary["final_model"]
    model_dir = assets / "streampro-tiny-synth"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model, processor = load_model_and_processor(run.model_dir(final), device="cpu")
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    (model_dir / "PROVENANCE.json").write_text(json.dumps({
        "source": f"streampro reproduce ({final}; {run_label(summary['settings'])}), chosen by validation W-Avg F1",
        "recipe": summary["settings"]["recipe_file"],
        "settings": summary["settings"],
        "validation_w_avg_f1": summary["validation_w_avg_f1"],
        "test_w_avg_f1": summary["rows"][final]["w_avg_f1"]}, indent=2) + "\n")
    report = run.report(final, "test")
    scores = {s["id"]: s.get("f1", 0.0) for s in report["per_sample"]}
    results = summary["rows"][final]
    write_embedded_card(model_dir, model, processor, json.loads((model_dir / "PROVENANCE.json").read_text()),
                        {t: results[f"{t}_f1"] for t in tasks_of(results)})
    scored = [t for t in tasks_of(results) if results[f"{t}_f1"] > 0]  # a task the model fails shows nothing
    tasks = sorted(scored, key=lambda t: -results[f"{t}_f1"])[:num_clips]
    refs = read_jsonl(run.data / "bench" / "test.jsonl")
    demo = assets / "demo"
    if demo.exists():
        shutil.rmtree(demo)
    (demo / "videos").mkdir(parents=True)
    chosen = []
    for task in tasks:
        ref = max((r for r in refs if r["task"] == task), key=lambda r: scores.get(r["id"], 0.0))
        shutil.copy2(run.data / ref["video"], demo / "videos" / Path(ref["video"]).name)
        chosen.append({**ref, "video": f"videos/{Path(ref['video']).name}"})
    write_jsonl(demo / "references.jsonl", chosen)
    logger.info("installed %s and %d demo clips into %s", final, len(chosen), assets)
