"""``streampro evaluate``: stream any model over a benchmark, resumably and data-parallel, and report StreamPro-F1.

``cli`` is the command, ``harness`` the loop (resume, sharding, merge), ``protocols`` the StreamPro
and decision-tree protocols, ``report`` the scoring and outputs. See docs/evaluation.md.
"""
