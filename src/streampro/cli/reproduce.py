"""``streampro reproduce``: the paper's training story on StreamPro-Synth, end to end, on a CPU.

    streampro reproduce --out runs/reproduce --jobs 3                        # the full run (default recipe)
    streampro reproduce --out runs/quick --quick                             # a minutes-long smoke run (CI)
    streampro reproduce --out runs/paper --recipe paper_stages --jobs 3      # the paper's stages alone
    streampro reproduce --out runs/s1 --seed 1 --set sft_steps=500           # one field changed
    streampro reproduce --out runs/reproduce --install-assets                # also ship the chosen model
    streampro reproduce --compare runs/reproduce runs/s1 --out runs/compare  # finished runs side by side
    streampro reproduce --recipe imbalance --sweep silence_factor=1,3.5,10.5 --out runs/imbalance --jobs 3
                                                                             # one run per value, one table + plot
    streampro reproduce --out runs/reproduce --systems --jobs 3              # + Streamo, StreamBridge, decision tree

Every stage is skipped when its output exists: run the same command again to resume. The run folder
records its recipe (``recipe.yaml``); a resume with another recipe or seed is refused. See
docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from streampro.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="Run folder (created; an existing one is resumed).")
    parser.add_argument("--recipe", default=None, metavar="NAME_OR_PATH",
                        help="A recipe of recipes/reproduce/ by name (default, quick, paper_stages) or a recipe "
                             "YAML file (default: default).")
    parser.add_argument("--quick", action="store_true", help="The quick recipe: a minutes-long smoke run (CI).")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="overrides",
                        help="Change one recipe field (repeatable), e.g. --set sft_steps=500.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data, the initial weights and training.")
    parser.add_argument("--jobs", type=int, default=1,
                        help="Run independent stages (the three SFT losses, the two GRPO runs, the evaluations) in "
                             "this many processes, one torch thread each. On 2 cores, 3 is fastest.")
    parser.add_argument("--compare", nargs="+", type=Path, metavar="RUN",
                        help="Only tabulate finished runs (e.g. seeds) side by side; writes --out/compare.md when "
                             "--out is given, prints the table either way.")
    parser.add_argument("--sweep", metavar="FIELD=V1,V2,...",
                        help="One run per value of one recipe field (OUT/FIELD-VALUE/), then OUT/sweep.md, "
                             "sweep.json and plots/sweep_w_avg.png: the SFT losses against the level "
                             "(docs/reproduce.md), e.g. --sweep silence_factor=1,3.5,10.5.")
    parser.add_argument("--systems", action="store_true",
                        help="After the run, compare on its clips, budget and seed: StreamPro, Streamo's three states, "
                             "StreamBridge's activation model, the decision-tree protocol and the fixed-time baseline "
                             "(OUT/systems.md, systems.json, plots/systems.png; docs/reproduce.md).")
    parser.add_argument("--install-assets", action="store_true",
                        help="Copy the final model (chosen on validation) and demo clips into streampro/assets/.")


def run(args: argparse.Namespace) -> int:
    from streampro.reproduce import Run, compare_runs, format_results, install_assets, load_recipe, reproduce
    from streampro.reproduce.recipe import apply_overrides

    if args.compare:
        if args.systems:
            raise UserError("--systems with --compare: --compare only tabulates finished runs",
                            "run the comparison on each run folder: streampro reproduce --out RUN --systems")
        table = compare_runs(args.compare)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "compare.md").write_text(table)
        print(table)
        return 0
    if args.out is None:
        raise UserError("--out DIR is required", "name the run folder, or pass --compare RUN ... to tabulate runs")
    if args.quick and args.recipe is not None:
        raise UserError(f"--quick and --recipe {args.recipe} both name a recipe", "pass one of them")
    source = "quick" if args.quick else args.recipe or "default"
    recipe = apply_overrides(load_recipe(source), args.overrides)
    start = time.monotonic()
    if args.sweep:
        from streampro.reproduce.sweep import parse_sweep, run_sweep

        if args.install_assets:
            raise UserError("--install-assets with --sweep: a sweep has no single final model",
                            "install from one level's run: streampro reproduce --out OUT/FIELD-VALUE ... --install-assets")
        if args.systems:
            raise UserError("--systems with --sweep: the comparison is made on one run folder",
                            "run it on one level's folder: streampro reproduce --out OUT/FIELD-VALUE ... --systems")
        field, values = parse_sweep(args.sweep)
        run_sweep(args.out, recipe, source, args.seed, field, values, args.jobs)
        print((args.out / "sweep.md").read_text())
        print(f"sweep: {args.out / 'sweep.md'}, {args.out / 'sweep.json'}; plot: {args.out / 'plots' / 'sweep_w_avg.png'}")
        print(f"wall time of this invocation: {time.monotonic() - start:.0f} s")
        return 0
    folder = Run(args.out, recipe, args.seed, source)
    summary = reproduce(folder, args.jobs)
    if args.install_assets:
        install_assets(folder, summary)
    print(format_results(summary))
    print(f"results: {args.out / 'results.md'}, {args.out / 'results.json'}; plots: {args.out / 'plots'}")
    if args.systems:
        from streampro.reproduce.systems import format_systems, run_systems

        print(format_systems(run_systems(folder, summary, args.jobs)))
        print(f"systems: {args.out / 'systems.md'}, {args.out / 'systems.json'}; plot: "
              f"{args.out / 'plots' / 'systems.png'}")
    print(f"wall time of this invocation: {time.monotonic() - start:.0f} s")
    return 0
