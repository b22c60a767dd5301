"""``streampro reproduce --sweep FIELD=V1,V2,...``: one run per value of one recipe field, one table, one plot.

Made for the imbalance question of docs/reproduce.md ("When does CB-Stream help?"): with
``silence_factor`` the levels hold the same clips in streams of growing silence, so every other
setting, the seed and the test clips' events are the same at every level. Each level is an ordinary
run folder (``OUT/FIELD-VALUE/``, resumable, its own ``results.md``); the sweep adds ``OUT/sweep.md``,
``OUT/sweep.json`` and ``OUT/plots/sweep_w_avg.png``. The x axis is the measured imbalance of each
level's training file (silent turns from the question on per response turn), whatever the field.
With ``silence_factor`` every level starts SFT from the first level's start model (init, caption stage,
control-first; :data:`SHARED_START_FIELDS`), so only the SFT data's silence differs between levels. Nothing
is chosen on the test split: the fixed-time baseline's time and answer come from validation.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

from streampro.dataset_scripts.manifest import write_text_atomic
from streampro.errors import UserError
from streampro.jsonl import read_jsonl
from streampro.reproduce.recipe import Recipe, apply_overrides
from streampro.reproduce.report import LOSS_PAIRS, _fmt, run_label, tasks_of
from streampro.reproduce.run import SFT_MODELS, Run

LOSS_NAMES = {"sft-ce": "CE", "sft-focal": "focal", "sft-cb_stream": "CB-Stream"}


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``FIELD=V1,V2,...`` -> (field, the values as written); at least two distinct values of a scalar field."""
    name, sep, raw = text.partition("=")
    scalar = [f.name for f in fields(Recipe) if f.name != "model_sizes"]
    if not sep or name not in scalar:
        raise UserError(f"--sweep {text}: expected FIELD=V1,V2,... with a recipe field",
                        f"e.g. --sweep silence_factor=1,3.5,10.5 (fields: {', '.join(scalar)})")
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if len(values) < 2 or len(set(values)) != len(values):
        raise UserError(f"--sweep {text}: needs at least two different values", "list them with commas: 1,3.5,10.5")
    return name, values


def level_dir(out: Path, field: str, value) -> Path:
    """A level's run folder: ``OUT/silence_factor-3.7``."""
    shown = f"{value:g}" if isinstance(value, float) else str(value).lower()
    return Path(out) / f"{field}-{shown}"


def sweep_recipes(recipe: Recipe, field: str, values: list[str]) -> list[Recipe]:
    """One recipe per value, each checked (a bad value is refused before any level runs)."""
    recipes = [apply_overrides(recipe, [f"{field}={v}"]) for v in values]
    if len({getattr(r, field) for r in recipes}) != len(recipes):  # 1 and 1.0 are one level
        raise UserError(f"--sweep {field}={','.join(values)}: needs at least two different values",
                        "list them with commas: 1,3.5,10.5")
    return recipes


def train_balance(run: Run) -> dict:
    """Response and silent turns of the level's training file (``sft/train.jsonl``: what the losses see)."""
    from streampro.dataset_scripts.builders import turn_balance

    table = turn_balance(read_jsonl(run.data / "sft" / "train.jsonl"), "sft/train.jsonl")
    row = table.get("all") or next(iter(table.values()))
    return {**row, "silence_per_response": row["silence_turns_from_question"] / row["response_turns"],
            "silence_per_response_all_turns": row["silence_turns"] / row["response_turns"]}


# Fields whose levels all start SFT from the first level's start model (its init, caption and control-first
# stages): with silence_factor the levels then differ in the SFT data's silence alone, and the stages
# before SFT (the longest, at long streams) run once. Other fields run every stage at every level.
SHARED_START_FIELDS = ("silence_factor",)
START_MODELS = ("init", "captions", "control-first")


def share_start(first: Run, run: Run) -> None:
    """Copy ``first``'s models before SFT (and the caption stage's evaluations) into ``run``, where missing.

    ``run`` then skips those stages; ``start_shared.json`` in its folder names where they came from.
    """
    import shutil

    copied = []
    for name in START_MODELS:
        src, dst = first.model_dir(name), run.model_dir(name)
        if src.is_dir() and not dst.exists():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint-*"))
            copied.append(f"models/{name}")
    for src in sorted((first.out / "eval" / "captions").glob("*")):
        dst = run.out / "eval" / "captions" / src.name
        if not dst.exists():
            shutil.copytree(src, dst)
            copied.append(f"eval/captions/{src.name}")
    record = run.out / "start_shared.json"
    if copied or not record.exists():
        write_text_atomic(record, json.dumps({"from": str(first.out), "copied": copied}, indent=2) + "\n")


def _clip_decisions(run: Run, model: str, split: str) -> list[tuple[list[float], list[float], int]]:
    """Per clip (in file order): p of the ground-truth response turns, p of the silent turns, responses emitted."""
    from streampro.dataset_scripts.schema import answer_time
    from streampro.modeling_streampro.time_streampro import turn_index_for_time, turn_time

    refs = {r["id"]: r for r in read_jsonl(run.data / "bench" / f"{split}.jsonl")}
    clips = []
    for record in sorted(read_jsonl(run.eval_dir(model, split) / "predictions.jsonl"), key=lambda r: r["id"]):
        ref = refs[record["id"]]
        due = {turn_time(turn_index_for_time(answer_time(ref["task"], a))) for a in ref["answers"]}
        pos, neg = [], []
        for event in record.get("events", []):
            if event.get("p") is not None:  # the turns from the question on
                (pos if any(abs(event["t"] - t) < 1e-6 for t in due) else neg).append(event["p"])
        clips.append((pos, neg, len(record["predictions"])))
    return clips


def _auc(clips: list) -> float | None:
    """P(a response turn's p > a silent turn's p), ties counting half, pooled over ``clips``."""
    import numpy as np

    pos = np.asarray([p for c in clips for p in c[0]])
    neg = np.sort(np.asarray([p for c in clips for p in c[1]]))
    if not len(pos) or not len(neg):
        return None
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def decision_stats(run: Run, models: list[str], split: str = "test", draws: int = 1000) -> dict:
    """How each model's decision head separates the ground-truth response turns from the silent ones.

    From ``streampro evaluate``'s per-turn events (p = P(</Response>) renormalised over the two decision
    tokens, docs/method.md §1) on the turns from the question on: ``auc``, the probability that a response
    turn gets a higher p than a silent turn (ties count half) — threshold-free, so it reads models still
    below the arg-max threshold everywhere — with a 95 % bootstrap interval over the clips (paired: the
    same draws for every model), the paired AUC differences of the loss pairs, and ``responses_per_clip``,
    what the arg-max decisions emitted.
    """
    import numpy as np

    clips = {m: _clip_decisions(run, m, split) for m in models}
    n = len(next(iter(clips.values())))
    rng = np.random.default_rng(0)
    samples = {m: [] for m in models}
    for _ in range(draws):
        pick = rng.integers(0, n, n)
        for m in models:
            samples[m].append(_auc([clips[m][i] for i in pick]))

    def interval(values) -> list | None:
        values = [v for v in values if v is not None]
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None

    out = {m: {"auc": _auc(clips[m]), "auc_interval": interval(samples[m]),
               "responses_per_clip": sum(c[2] for c in clips[m]) / max(1, n)} for m in models}
    out["differences"] = []
    for a, b in LOSS_PAIRS:
        if a in clips and b in clips and out[a]["auc"] is not None and out[b]["auc"] is not None:
            diffs = [x - y for x, y in zip(samples[a], samples[b]) if x is not None and y is not None]
            out["differences"].append({"a": a, "b": b, "difference": out[a]["auc"] - out[b]["auc"],
                                       **dict(zip(("low", "high"), interval(diffs)))})
    return out


def level_summary(run: Run, field: str, summary: dict) -> dict:
    """The numbers the sweep compares at one level, from its ``results.json`` summary."""
    rows, intervals = summary["rows"], summary["test_intervals"]
    models = [m for m in SFT_MODELS if m in summary["models"]]
    return {
        "field": field, "value": getattr(run.recipe, field), "run": str(run.out),
        "train": train_balance(run),
        "baseline": rows["fixed-time baseline"],
        "test": {m: rows[m] for m in models},
        "shuffled": {m: rows[f"{m} (shuffled frames)"] for m in models},
        "w_avg_interval": {m: intervals["w_avg"][m] for m in models},
        "differences": [d for d in intervals["differences"] if (d["a"], d["b"]) in LOSS_PAIRS],
        "validation_w_avg_f1": {m: summary["validation_w_avg_f1"][m] for m in models},
        "works": {m: summary["works"][m] for m in models},
        "decisions": decision_stats(run, models),
        "answers_per_clip": (lambda refs: sum(len(r["answers"]) for r in refs) / max(1, len(refs)))(
            read_jsonl(run.data / "bench" / "test.jsonl")),
        "timings_s": summary["timings_s"],
        "start_shared_from": (json.loads((run.out / "start_shared.json").read_text())["from"]
                              if (run.out / "start_shared.json").is_file() else None),
    }


def run_sweep(out: Path, recipe: Recipe, source: str, seed: int, field: str, values: list[str],
              jobs: int = 1) -> dict:
    """Every level in turn (each resumed when it exists), then ``sweep.json``, ``sweep.md`` and the plot."""
    from streampro.reproduce.stages import reproduce

    out = Path(out)
    runs = [Run(level_dir(out, field, getattr(r, field)), r, seed, source) for r in sweep_recipes(recipe, field, values)]
    levels = []
    for run in runs:
        if field in SHARED_START_FIELDS and run is not runs[0]:
            share_start(runs[0], run)
        levels.append(level_summary(run, field, reproduce(run, jobs)))
    settings = runs[0].settings()  # the label of what every level shares: seed, recipe, other changed fields
    settings["changed"] = {k: v for k, v in settings["changed"].items() if k != field}
    sweep = {"field": field, "seed": seed, "recipe": settings["recipe_file"], "label": run_label(settings),
             "levels": levels}
    write_text_atomic(out / "sweep.json", json.dumps(sweep, indent=2) + "\n")
    write_text_atomic(out / "sweep.md", format_sweep(sweep))
    plot_sweep(sweep, out / "plots" / "sweep_w_avg.png")
    return sweep


def _ci(level: dict, model: str) -> str:
    lo, hi = level["w_avg_interval"][model]
    return f"{_fmt(level['test'][model]['w_avg_f1'])} [{_fmt(lo)}, {_fmt(hi)}]"


def _diff(d: dict) -> str:
    return f"{d['difference']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"


def format_sweep(sweep: dict) -> str:
    """The sweep's tables (markdown): W-Avg with intervals, the paired loss differences, the controls, per task."""
    from streampro.metrics import TASKS

    levels, field = sweep["levels"], sweep["field"]
    models = list(levels[0]["test"])
    pair_names = [f"{LOSS_NAMES[a]} − {LOSS_NAMES[b]}" for a, b in LOSS_PAIRS]
    lines = [f"# Sweep of `{field}` (test split, exact judge, ×100)", "",
             f"Runs: {sweep['label']}; one run folder per level. Imbalance: silent turns from the question on "
             "per response turn in the level's `sft/train.jsonl` (all turns in brackets). Intervals: 95 % "
             "bootstrap over the test clips; differences paired on the same clips."
             + (" Every level starts SFT from the first level's start model (init, captions, control-first)."
                if field in SHARED_START_FIELDS else ""), "",
             f"| {field} | silent per response | fixed-time baseline | "
             + " | ".join(f"{LOSS_NAMES[m]} [95 %]" for m in models) + " | "
             + " | ".join(f"{p} [95 %]" for p in pair_names) + " |", "|---" * (3 + len(models) + len(pair_names)) + "|"]
    for lv in levels:
        t = lv["train"]
        diffs = {(d["a"], d["b"]): _diff(d) for d in lv["differences"]}
        lines.append(f"| {format_value(lv['value'])} | 1 : {t['silence_per_response']:.1f} (1 : {t['silence_per_response_all_turns']:.1f}) | "
                     f"{_fmt(lv['baseline']['w_avg_f1'])} | " + " | ".join(_ci(lv, m) for m in models) + " | "
                     + " | ".join(diffs.get(p, "–") for p in LOSS_PAIRS) + " |")
    lines += ["", "Shuffled frames (test W-Avg; a model that watches the video loses here) and validation W-Avg:", "",
              f"| {field} | " + " | ".join(f"{LOSS_NAMES[m]} shuffled" for m in models) + " | "
              + " | ".join(f"{LOSS_NAMES[m]} validation" for m in models) + " |",
              "|---" * (1 + 2 * len(models)) + "|"]
    for lv in levels:
        lines.append(f"| {format_value(lv['value'])} | " + " | ".join(_fmt(lv["shuffled"][m]["w_avg_f1"]) for m in models) + " | "
                     + " | ".join(_fmt(lv["validation_w_avg_f1"][m]) for m in models) + " |")
    lines += ["", "Decisions on the test clips: AUC of P(</Response>) on the ground-truth response turns against "
              "the silent turns from the question on (0.5 = chance; threshold-free) [95 % bootstrap over the clips], "
              "the paired AUC difference CB-Stream − CE, and responses emitted per clip (arg-max decisions):", "",
              f"| {field} | " + " | ".join(f"{LOSS_NAMES[m]} AUC" for m in models) + " | CB-Stream − CE AUC | "
              "ground-truth answers per clip | " + " | ".join(f"{LOSS_NAMES[m]} responses per clip" for m in models)
              + " |", "|---" * (3 + 2 * len(models)) + "|"]

    def auc_cell(d: dict) -> str:
        if d["auc"] is None:
            return "–"
        lo, hi = d["auc_interval"]
        return f"{d['auc']:.2f} [{lo:.2f}, {hi:.2f}]"

    for lv in levels:
        dec = lv["decisions"]
        cb_ce = next((d for d in dec["differences"] if (d["a"], d["b"]) == ("sft-cb_stream", "sft-ce")), None)
        lines.append(f"| {format_value(lv['value'])} | " + " | ".join(auc_cell(dec[m]) for m in models) + " | "
                     + ("–" if cb_ce is None else f"{cb_ce['difference']:+.2f} [{cb_ce['low']:+.2f}, {cb_ce['high']:+.2f}]")
                     + f" | {lv['answers_per_clip']:.2f} | "
                     + " | ".join(f"{dec[m]['responses_per_clip']:.2f}" for m in models) + " |")
    lines += ["", "Per task, test F1 (plain / shuffled; ✓ = works: beats the fixed-time baseline and falls by ≥ 5 "
              "points and ≥ 25 % under shuffling):", "",
              f"| {field} | model | " + " | ".join(TASKS) + " | W-Avg | works on |", "|---" * (len(TASKS) + 4) + "|"]
    for lv in levels:
        base = lv["baseline"]
        lines.append(f"| {format_value(lv['value'])} | fixed-time baseline | "
                     + " | ".join(_fmt(base.get(f"{t}_f1")) for t in TASKS) + f" | {_fmt(base.get('w_avg_f1'))} | – |")
        for m in models:
            r, s, w = lv["test"][m], lv["shuffled"][m], lv["works"][m]
            cells = [f"{_fmt(r.get(f'{t}_f1'))} / {_fmt(s.get(f'{t}_f1'))}{' ✓' if w.get(t) else ''}"
                     for t in tasks_of(r)]
            lines.append(f"| {format_value(lv['value'])} | {LOSS_NAMES[m]} | " + " | ".join(cells)
                         + f" | {_fmt(r.get('w_avg_f1'))} | {sum(w.values())} of {len(w)} |")
    lines += ["", "Training data per level (`sft/train.jsonl`): "
              + "; ".join(f"{format_value(lv['value'])}: {lv['train']['records']} records, {lv['train']['response_turns']} response "
                          f"and {lv['train']['silence_turns_from_question']} silent turns from the question on"
                          for lv in levels), "",
              "Stage time per level (s, summed over stages; parallel stages each count in full): "
              + ", ".join(f"{format_value(lv['value'])}: {sum(lv['timings_s'].values()):.0f}" for lv in levels), ""]
    return "\n".join(lines)


def plot_sweep(sweep: dict, path: Path) -> None:
    """Test W-Avg against the imbalance, one line per loss with its interval; the paired W-Avg differences and
    the decision AUC (:func:`decision_stats`) beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sweep["levels"]
    x = [lv["train"]["silence_per_response"] for lv in levels]
    models = list(levels[0]["test"])
    fig, (left, right, third) = plt.subplots(1, 3, figsize=(15, 4.4))
    for i, m in enumerate(models):
        nudge = 1 + 0.025 * (i - 1)  # side by side on the log axis, so the intervals do not hide one another
        y = [lv["test"][m]["w_avg_f1"] for lv in levels]
        lo = [yy - lv["w_avg_interval"][m][0] for yy, lv in zip(y, levels)]
        hi = [lv["w_avg_interval"][m][1] - yy for yy, lv in zip(y, levels)]
        left.errorbar([v * nudge for v in x], y, yerr=[lo, hi], marker="o", capsize=3, label=LOSS_NAMES[m],
                      color=f"C{i}")
        left.plot(x, [lv["shuffled"][m]["w_avg_f1"] for lv in levels], ls=":", color=f"C{i}", lw=1)
    left.plot(x, [lv["baseline"]["w_avg_f1"] for lv in levels], ls="--", color="gray", label="fixed-time baseline")
    left.set_ylabel("test W-Avg F1 (95 % bootstrap interval)")
    left.set_title("SFT loss against imbalance (dotted: shuffled frames)", fontsize=10)
    pairs = [(a, b) for a, b in LOSS_PAIRS if b == "sft-ce" or a == "sft-cb_stream"]
    for j, (a, b) in enumerate(pairs):
        ds = [next(d for d in lv["differences"] if (d["a"], d["b"]) == (a, b)) for lv in levels]
        y = [d["difference"] for d in ds]
        nudge = 1 + 0.025 * (j - 1)
        right.errorbar([v * nudge for v in x], y, yerr=[[yy - d["low"] for yy, d in zip(y, ds)],
                                                        [d["high"] - yy for yy, d in zip(y, ds)]],
                       marker="s", capsize=3, label=f"{LOSS_NAMES[a]} − {LOSS_NAMES[b]}", color=f"C{j + 3}")
    right.axhline(0, color="black", lw=0.8)
    right.set_ylabel("paired W-Avg difference (95 % interval)")
    right.set_title("Does CB-Stream gain with the imbalance? (> 0: it is ahead)", fontsize=10)
    for i, m in enumerate(models):  # the decision head, threshold-free
        dec = [lv["decisions"][m] for lv in levels if lv["decisions"][m]["auc"] is not None]
        xs = [v * (1 + 0.025 * (i - 1)) for v, lv in zip(x, levels) if lv["decisions"][m]["auc"] is not None]
        y = [d["auc"] for d in dec]
        third.errorbar(xs, y, yerr=[[yy - d["auc_interval"][0] for yy, d in zip(y, dec)],
                                    [d["auc_interval"][1] - yy for yy, d in zip(y, dec)]],
                       marker="o", capsize=3, label=LOSS_NAMES[m], color=f"C{i}")
    third.axhline(0.5, color="gray", lw=0.8, ls="--")
    third.set_ylabel("AUC of P(</Response>): response vs silent turns")
    third.set_title("Decision head on the test clips (0.5: chance)", fontsize=10)
    for ax in (left, right, third):
        ax.set_xscale("log")
        ax.set_xticks(x, [f"1:{v:.0f}" for v in x])
        ax.minorticks_off()
        ax.set_xlim(min(x) / 1.25, max(x) * 1.25)
        ax.set_xlabel("response : silent turns in training (from the question on)")
        ax.legend(fontsize=8)
    fig.suptitle(f"{sweep['label']}: sweep of {sweep['field']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_value(value) -> str:
    """A level's value as the tables show it."""
    return f"{value:g}" if isinstance(value, float) and math.isfinite(value) else str(value)
