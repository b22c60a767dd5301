"""``streampro reproduce --systems``: five ways to decide when to answer, on one run's clips and budget.

After the run's own stages (each skipped when done, so a finished run folder is reused as it is), the
comparison of docs/reproduce.md ("Systems on the same clips") trains two more models and runs two
more protocols, into the same run folder:

- ``sft-streamo``: Streamo's three states (``</Silence>``, ``</Standby>``, ``</Response>``; docs/method.md §7)
  with the focal loss, from the SFT losses' start model with their steps, batch, learning rate, seed and
  clips (``data/sft/streamo_train.jsonl``: the records of ``sft/train.jsonl``, in its order, with their
  standby turns).
- ``activation``: StreamBridge's activation model (docs/activation.md) from the same start model, on the
  same streams (``sft/train.jsonl``), with the SFT steps, batch, learning rate and seed; its label rule,
  window and positive weight are those of ``recipes/activation/tiny_synth_cpu.yaml``.
- Evaluations (exact judge; validation, test, test with shuffled frames, the control clips):
  ``eval/sft-streamo`` (its own decision tokens), ``eval/streambridge`` (``--protocol activation``: the
  activation model decides, the run's ``sft-cb_stream`` answers as a plain model) and
  ``eval/decision-tree`` (``--protocol decision-tree`` on the same answerer).

Then ``systems.json``, ``systems.md`` and ``plots/systems.png``: the fixed-time baseline, StreamPro
(``sft-cb_stream``, the same SFT budget), the run's final model (chosen on validation), Streamo,
StreamBridge and the decision tree, with bootstrap intervals and paired differences against StreamPro
on the same test clips. Nothing is chosen on the test split.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from streampro.dataset_scripts.manifest import write_text_atomic
from streampro.errors import UserError
from streampro.jsonl import read_jsonl, write_jsonl
from streampro.reproduce.recipe import RECIPES_DIR
from streampro.reproduce.report import _fmt, run_label, works_on
from streampro.reproduce.run import Run

STREAMPRO = "sft-cb_stream"  # the shipped recipe's SFT loss, and the answerer of the two offline protocols
STREAMO = "sft-streamo"
ACTIVATION = "activation"
STREAMO_TRAIN = Path("sft") / "streamo_train.jsonl"  # under the run's data folder
# The activation model's label rule, window and positive weight: the package's activation recipe.
ACTIVATION_RECIPE = RECIPES_DIR.parent / "activation" / "tiny_synth_cpu.yaml"
ACTIVATION_FIELDS = ("positive_percent", "window_frames", "pos_weight")
# The systems run by another protocol, with sft-cb_stream answering (their eval folders).
PROTOCOLS = ("streambridge", "decision-tree")


def _protocol_options(run: Run, system: str) -> tuple[str, ...]:
    if system == "streambridge":
        return ("--protocol", "activation", "--activation-model", str(run.model_dir(ACTIVATION)))
    return ("--protocol", "decision-tree")


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def streamo_records(run: Run) -> list[dict]:
    """The SFT records of ``sft/train.jsonl`` rebuilt from the raw samples, in its order, each with its standby turns.

    ``data synth`` writes the seven tasks' clips, then the control clips, then the extra clips (the last
    ``extra_train_clips`` of ``raw/train.jsonl``); an older run's file may predate the ``standby`` key.
    """
    from streampro.dataset_scripts.builders import build_records
    from streampro.dataset_scripts.schema import validate_raw

    def samples(name: str) -> list[dict]:
        path = run.data / "raw" / name
        return [validate_raw(s, where=f"{path}:{i + 1}") for i, s in enumerate(read_jsonl(path))] if path.is_file() else []

    raw = samples("train.jsonl")
    cut = len(raw) - run.recipe.extra_train_clips
    return build_records("sft", raw[:cut]) + build_records("sft", samples("control_train.jsonl")) + \
        build_records("sft", raw[cut:])


def train_streamo(run: Run) -> None:
    """``sft-streamo``: three states, focal loss (Streamo's recipe), the SFT losses' start, budget and clips."""
    from streampro.reproduce.stages import _sft, sft_start

    train_file = run.data / STREAMO_TRAIN
    if not train_file.is_file():
        records = streamo_records(run)
        ids = [r["id"] for r in read_jsonl(run.data / "sft" / "train.jsonl")]
        if [r["id"] for r in records] != ids:
            raise UserError(f"{run.data / 'raw' / 'train.jsonl'} rebuilds other SFT records than "
                            f"{run.data / 'sft' / 'train.jsonl'} ({len(records)} for {len(ids)})",
                            "compare the systems in a run folder made by this version (a new --out)")
        write_jsonl(train_file, records)  # atomic: a killed write leaves no file
    rec = run.recipe
    _sft(run, STREAMO, sft_start(run), train_file, "focal", rec.sft_steps, extra=("--decision_states", "3"))


def activation_settings() -> dict:
    """The label rule, window and positive weight of ``recipes/activation/tiny_synth_cpu.yaml``."""
    values = yaml.safe_load(ACTIVATION_RECIPE.read_text(encoding="utf-8"))
    return {k: values[k] for k in ACTIVATION_FIELDS}


def train_activation(run: Run) -> None:
    """``activation``: StreamBridge's activation model from the SFT start model, on the SFT losses' streams and budget.

    The start model's vision tower and language model are copied and ``<ACT>`` is added (docs/activation.md,
    "Initialisation"); the SFT steps, batch, learning rate, schedule, seed and frozen tower apply.
    """
    from streampro.reproduce.stages import _train_stage, sft_start

    rec = run.recipe
    options = [x for k, v in activation_settings().items() for x in (f"--{k}", str(v))]
    _train_stage(run, ACTIVATION, sft_start(run), "activation", rec.sft_steps, [
        "--tiny_seed", str(run.seed), "--train_file", str(run.data / "sft" / "train.jsonl"),
        "--frames_root", str(run.data), "--frame_cache_dir", str(run.data / ".frame_cache"), *options,
        "--per_device_train_batch_size", str(rec.sft_batch), "--gradient_accumulation_steps", "1",
        "--learning_rate", str(rec.sft_lr), "--lr_scheduler_type", "cosine", "--warmup_steps", str(rec.sft_warmup),
    ])


# The training stages ``stages.run_stages(run, jobs, "systems", ...)`` may run in worker processes.
TRAINING_STAGES = {STREAMO: train_streamo, ACTIVATION: train_activation}


# ------------------------------------------------------------------------------------------------
# The comparison
# ------------------------------------------------------------------------------------------------


def splits(run: Run) -> list[tuple[str, bool]]:
    """(split, shuffled frames) every system is evaluated on: what ``stages.reproduce`` runs the run's models on."""
    out = [("validation", False), ("test", False), ("test", True)]
    if run.recipe.control_clips:
        out += [("control_test", False), ("control_test", True)]
    return out


def run_systems(run: Run, summary: dict, jobs: int = 1) -> dict:
    """The two training stages, every evaluation (each skipped when done), then the report; returns it.

    ``summary``: the run's ``results.json`` (its final model and fixed-time baseline).
    """
    from streampro.reproduce.stages import run_stages

    run_stages(run, jobs, "systems", [(STREAMO,), (ACTIVATION,)])
    calls = [(STREAMO, split, shuffle) for split, shuffle in splits(run)]
    calls += [(STREAMPRO, split, shuffle, None, system, _protocol_options(run, system))
              for system in PROTOCOLS for split, shuffle in splits(run)]
    run_stages(run, jobs, "evaluate", calls)
    report = collect_systems(run, summary)
    write_systems(run, report)
    return report


def _baseline_per_sample(run: Run, choice: dict) -> list[dict]:
    """The fixed-time baseline's per-clip scores on test (for its interval and the paired differences)."""
    from streampro.metrics import compute_streampro_f1
    from streampro.reproduce.baseline import _constant

    test = read_jsonl(run.data / "bench" / "test.jsonl")
    preds = [_constant(choice[r["task"]]["time"], choice[r["task"]]["answer"], r) for r in test]
    return compute_streampro_f1(preds, test, judge="exact", return_per_sample=True)["per_sample"]


def _decisions_per_clip(run: Run, folder: str) -> dict:
    """Per test clip, on average: responses emitted and each per-frame decision (``evaluate``'s events)."""
    records = read_jsonl(run.eval_dir(folder, "test") / "predictions.jsonl")
    counts: dict[str, int] = {}
    for record in records:
        for event in record.get("events", []):
            counts[event["d"]] = counts.get(event["d"], 0) + 1
    n = max(1, len(records))
    return {"responses": sum(len(r["predictions"]) for r in records) / n,
            "decisions": {d: c / n for d, c in sorted(counts.items())}}


def system_rows(run: Run, summary: dict) -> list[dict]:
    """(key, name, eval folder, the model, how it decides) of each compared system, the baseline first."""
    final = summary["final_model"]
    return [
        {"key": "baseline", "name": "fixed-time baseline", "folder": None, "model": None,
         "how": "one answer per clip at one time, both chosen per task on validation"},
        {"key": "streampro", "name": "StreamPro", "folder": STREAMPRO, "model": STREAMPRO,
         "how": "two decision tokens, CB-Stream loss (the paper's SFT), the SFT budget"},
        {"key": "streampro-final", "name": "StreamPro, final model", "folder": final, "model": final,
         "how": f"the run's model with the best validation W-Avg ({final})"},
        {"key": "streamo", "name": "Streamo", "folder": STREAMO, "model": STREAMO,
         "how": "three decision tokens (silence, standby, response), focal loss, the SFT budget"},
        {"key": "streambridge", "name": "StreamBridge", "folder": "streambridge", "model": ACTIVATION,
         "how": f"activation model decides, {STREAMPRO} answers from a round-decayed buffer"},
        {"key": "decision-tree", "name": "decision tree", "folder": "decision-tree", "model": STREAMPRO,
         "how": f"{STREAMPRO} asked 'enough to answer?' (p(Yes) > 0.5) after every frame, then answers"},
    ]


def collect_systems(run: Run, summary: dict) -> dict:
    """Every system's test row, interval, shuffled and validation W-Avg, per-task F1, works-on, control F1, and
    the paired differences of each against StreamPro on the same test clips."""
    from streampro.metrics import paired_difference_interval, w_avg_interval

    baseline = summary["rows"]["fixed-time baseline"]
    per_sample, systems = {}, []
    for row in system_rows(run, summary):
        folder = row["folder"]
        if folder is None:
            per_sample[row["key"]] = _baseline_per_sample(run, summary["baseline_choice"])
            test, shuffled, validation = baseline, None, None
            control = (summary.get("control_f1") or {}).get("fixed-time baseline")
            control_shuffled, decisions, works = None, None, None
        else:
            report = run.report(folder, "test")
            per_sample[row["key"]] = report["per_sample"]
            test, shuffled = report["results"], run.results(folder, "test-shuffled")
            validation = run.results(folder, "validation")["w_avg_f1"]
            control = control_shuffled = None
            if run.recipe.control_clips:  # scored as task OU, never in W-Avg (docs/reproduce.md, "Controls")
                control = run.results(folder, "control_test")["OU_f1"]
                control_shuffled = run.results(folder, "control_test-shuffled")["OU_f1"]
            decisions, works = _decisions_per_clip(run, folder), works_on(test, shuffled, baseline)
        systems.append({**row, "test": test, "shuffled": shuffled, "validation_w_avg_f1": validation,
                        "w_avg_interval": list(w_avg_interval(per_sample[row["key"]])), "works": works,
                        "control_f1": control, "control_f1_shuffled": control_shuffled, "per_clip": decisions})
    differences = [{"a": s["key"], "b": "streampro", **paired_difference_interval(per_sample[s["key"]],
                                                                                  per_sample["streampro"])}
                   for s in systems if s["key"] != "streampro"]
    starts = {m: (run.model_dir(m) / "start.txt").read_text().strip() for m in (STREAMPRO, STREAMO, ACTIVATION)}
    rec = run.recipe
    return {
        "settings": run.settings(),
        "final_model": summary["final_model"],
        "systems": systems,
        "differences": differences,
        "budget": {"start": starts, "steps": rec.sft_steps, "batch": rec.sft_batch, "lr": rec.sft_lr,
                   "warmup": rec.sft_warmup, "seed": run.seed, "activation": activation_settings()},
        "baseline_choice": summary["baseline_choice"],
        "timings_s": {k: v for k, v in run.timings.items() if k in TRAINING_STAGES
                      or (k.startswith("eval ") and k.split(" ")[1] in (STREAMO, *PROTOCOLS))},
    }


def _interval(system: dict) -> str:
    lo, hi = system["w_avg_interval"]
    return f"{_fmt(system['test'].get('w_avg_f1'))} [{_fmt(lo)}, {_fmt(hi)}]"


def format_systems(report: dict) -> str:
    """``systems.md``: W-Avg with intervals and the controls, the paired differences, per-task F1, the control task."""
    from streampro.metrics import TASKS

    systems = report["systems"]
    names = {s["key"]: s["name"] for s in systems}
    budget = report["budget"]
    lines = ["# Systems on the same clips (StreamPro-Synth test split, exact judge, ×100)", "",
             f"Run: {run_label(report['settings'])}. Every trained system starts from `{budget['start'][STREAMPRO]}` "
             f"with {budget['steps']} steps of batch {budget['batch']} at learning rate {budget['lr']:g}, seed "
             f"{budget['seed']}; intervals: 95 % bootstrap over the test clips, differences paired on the same clips.",
             "", "| system | how it decides | test W-Avg [95 %] | shuffled frames | validation W-Avg | "
             "responses per clip | works on |", "|---|---|---|---|---|---|---|"]
    for s in systems:
        works = "–" if s["works"] is None else f"{sum(s['works'].values())} of {len(s['works'])}"
        responses = "–" if s["per_clip"] is None else f"{s['per_clip']['responses']:.2f}"
        shuffled = "–" if s["shuffled"] is None else _fmt(s["shuffled"].get("w_avg_f1"))
        lines.append(f"| {s['name']} | {s['how']} | {_interval(s)} | {shuffled} | {_fmt(s['validation_w_avg_f1'])} | "
                     f"{responses} | {works} |")
    lines += ["", "| paired difference on the test clips | W-Avg | 95 % interval |", "|---|---|---|"]
    lines += [f"| {names[d['a']]} − {names[d['b']]} | {d['difference']:+.1f} | [{d['low']:+.1f}, {d['high']:+.1f}] |"
              for d in report["differences"]]
    lines += ["", "Per task, test F1 (plain / shuffled; ✓ = works: beats the fixed-time baseline and falls by ≥ 5 "
              "points and ≥ 25 % under shuffling):", "",
              "| system | " + " | ".join(TASKS) + " | W-Avg |", "|---" * (len(TASKS) + 2) + "|"]
    for s in systems:
        r, sh, w = s["test"], s["shuffled"] or {}, s["works"] or {}
        cells = [_fmt(r.get(f"{t}_f1")) + ("" if s["shuffled"] is None else f" / {_fmt(sh.get(f'{t}_f1'))}")
                 + (" ✓" if w.get(t) else "") for t in TASKS]
        lines.append(f"| {s['name']} | " + " | ".join(cells) + f" | {_fmt(r.get('w_avg_f1'))} |")
    if any(s["control_f1"] is not None for s in systems):
        lines += ["", "Control task \"the screen changes colour\" (scored as OU; not in W-Avg): "
                  + ", ".join(f"{s['name']} {_fmt(s['control_f1'])}"
                              + ("" if s["control_f1_shuffled"] is None else f" / {_fmt(s['control_f1_shuffled'])}")
                              for s in systems) + " (plain / shuffled)."]
    decided = [s for s in systems if s["per_clip"] is not None]
    lines += ["", "Per-frame decisions per test clip (`evaluate`'s events): "
              + "; ".join(f"{s['name']}: " + ", ".join(f"{d} {n:.1f}" for d, n in s["per_clip"]["decisions"].items())
                          for s in decided) + ".", "",
              "Activation model: " + ", ".join(f"{k} {v:g}" for k, v in budget["activation"].items())
              + " (recipes/activation/tiny_synth_cpu.yaml). Final model (chosen on validation): "
              f"**{report['final_model']}**.", "",
              "Stage wall times (s): " + (", ".join(f"{k} {v:g}" for k, v in report["timings_s"].items()) or "–"), ""]
    return "\n".join(lines)


def plot_systems(report: dict, path: Path) -> None:
    """Test W-Avg per system with its interval, shuffled frames as a second marker, the baseline as a line;
    per-task F1 beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from streampro.metrics import TASKS

    systems = [s for s in report["systems"] if s["key"] != "baseline"]
    baseline = next(s for s in report["systems"] if s["key"] == "baseline")
    y = np.arange(len(systems))[::-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 0.55 * len(systems) + 2.2),
                                      gridspec_kw={"width_ratios": [1, 1.4]})
    w = [s["test"].get("w_avg_f1") or 0.0 for s in systems]
    lo = [v - s["w_avg_interval"][0] for v, s in zip(w, systems)]
    hi = [s["w_avg_interval"][1] - v for v, s in zip(w, systems)]
    left.errorbar(w, y, xerr=[lo, hi], fmt="o", capsize=4, color="C0", label="test W-Avg (95 % interval)")
    left.plot([s["shuffled"].get("w_avg_f1") or 0.0 for s in systems], y, "x", ms=9, mew=2, color="C3",
              label="shuffled frames")
    left.axvline(baseline["test"].get("w_avg_f1") or 0.0, color="gray", ls="--", label="fixed-time baseline")
    left.set_yticks(y, [s["name"] + (f" ({s['folder']})" if s["key"] == "streampro-final" else "") for s in systems])
    left.set_xlabel("W-Avg F1 (test, exact judge, ×100)")
    left.legend(fontsize=8, loc="lower right")
    left.set_title("Same clips, budget and seed", fontsize=10)
    x = np.arange(len(TASKS))
    width = 0.8 / (len(systems) + 1)
    for i, s in enumerate([baseline, *systems]):
        color = "gray" if s is baseline else f"C{i - 1}"
        right.bar(x + (i - len(systems) / 2) * width, [s["test"].get(f"{t}_f1") or 0.0 for t in TASKS], width,
                  label=s["name"], color=color)
    right.set_xticks(x, TASKS)
    right.set_ylabel("F1 (test)")
    right.set_title("Per-task F1", fontsize=10)
    right.legend(fontsize=7, ncol=3)
    fig.suptitle(run_label(report["settings"]), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_systems(run: Run, report: dict) -> None:
    """The plot, then ``systems.md``, then ``systems.json`` (written last: its presence means a whole report)."""
    plot_systems(report, run.out / "plots" / "systems.png")
    write_text_atomic(run.out / "systems.md", format_systems(report))
    write_text_atomic(run.out / "systems.json", json.dumps(report, indent=2) + "\n")
