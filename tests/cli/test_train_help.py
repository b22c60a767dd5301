"""``streampro train STAGE --help``: the --config usage and the StreamPro fields; --help-all adds TRL's."""

import pytest

from streampro.cli import main


@pytest.mark.parametrize(("stage", "own", "config_cls"), [("sft", "--loss_type", "StreamProSFTConfig"),
                                                          ("grpo", "--num_generations", "StreamProGRPOConfig")])
def test_train_help_shows_config_usage_and_project_fields(stage, own, config_cls, capsys):
    assert main(["train", stage, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: streampro train {stage} --config RECIPE.yaml [--field value ...]\n")
    assert "--config RECIPE.yaml" in out and own in out and f"StreamPro options ({config_cls})" in out
    assert "--per_device_train_batch_size" not in out and f"streampro train {stage} --help-all" in out
    assert len(out.splitlines()) < 150


def test_train_help_all_lists_inherited_fields(capsys):
    assert main(["train", "sft", "--help-all"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: streampro train sft --config RECIPE.yaml [--field value ...]\n")
    assert "--per_device_train_batch_size" in out and "--loss_type" in out and "--lora_r" in out
