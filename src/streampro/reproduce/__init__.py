"""``streampro reproduce``: the paper's training story on StreamPro-Synth, end to end, on a CPU.

The command (``streampro.cli.reproduce``) resolves a recipe, opens a run folder and runs every stage;
docs/reproduce.md is the reference. The modules, in the order a run uses them:

- :mod:`~streampro.reproduce.recipe`: the :class:`Recipe` dataclass and its YAML files
  (``recipes/reproduce/*.yaml``), parsed strictly.
- :mod:`~streampro.reproduce.run`: the run folder, the recipe it records, stage timings.
- :mod:`~streampro.reproduce.stages`: data, init, captions, control-first, SFT (three losses), GRPO,
  evaluation, and the process pool of ``--jobs``.
- :mod:`~streampro.reproduce.baseline`: the fixed-time baseline, chosen on validation.
- :mod:`~streampro.reproduce.report`: ``results.json`` / ``results.md``, plots, ``--compare``.
- :mod:`~streampro.reproduce.assets`: ship the chosen model and demo clips (``--install-assets``).
- :mod:`~streampro.reproduce.sweep`: one run per value of a recipe field, one table and plot (``--sweep``).
- :mod:`~streampro.reproduce.systems`: StreamPro, Streamo, StreamBridge and the decision tree on one run's
  clips and budget (``--systems``).

Nothing here selects a setting on the test split.
"""

from streampro.reproduce.assets import install_assets
from streampro.reproduce.recipe import Recipe, load_recipe
from streampro.reproduce.report import compare_runs, format_results, run_label
from streampro.reproduce.run import MODELS, Run
from streampro.reproduce.stages import reproduce

__all__ = ["MODELS", "Recipe", "Run", "compare_runs", "format_results", "install_assets", "load_recipe", "reproduce",
           "run_label"]
