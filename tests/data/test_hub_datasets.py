"""Built and synthetic datasets are Hub-ready: Parquet shards with declared features, a full card,
and ``datasets.load_dataset(DIR)`` / ``load_dataset(DIR, CONFIG)`` working for every config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from streampro.dataset_scripts.builders import build
from streampro.dataset_scripts.hub import features, size_category
from streampro.dataset_scripts.synth import generate

RAW = [
    {"id": "a", "task": "TG", "source": "charades-sta", "video": "a.mp4", "duration": 30.0, "question": "When?",
     "question_time": 0.0, "answers": [{"text": "12s - 18s", "start": 12.0, "end": 18.0}]},
    {"id": "b", "task": "OU", "source": "ovo-bench", "video": "b.mp4", "duration": 20.0, "question": "Tell me.",
     "question_time": 1.0, "answers": [{"text": "now", "time": 5.0}, {"text": "again", "time": 9.0}]},
    {"id": "c", "task": "EU", "source": "ovo-bench", "video": "c.mp4", "duration": 20.0, "question": "Steps?",
     "question_time": 0.0, "answers": [{"text": "cut", "start": 2.0, "end": 4.0}], "system": "Be brief."},
]


def _front_matter(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_rows(loaded, rows):
    """The Parquet rows equal the JSONL rows, with the nulls Arrow adds for absent answer times."""
    assert len(loaded) == len(rows)
    for got, want in zip(loaded, rows):
        for key, value in want.items():
            if key == "answers":
                value = [{"time": None, "start": None, "end": None, **a} for a in value]
            assert got[key] == value, key


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth-hub")
    generate(out, n=21, seed=1, size=32, progress=False, control=3, captions=3, motion_captions=3)
    return out


def test_every_synth_config_loads_with_declared_features(synth, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    meta = _front_matter(synth)
    names = [c["config_name"] for c in meta["configs"]]
    assert names == ["sft", "rl", "bench", "bench_control", "sft_caption", "bench_caption", "sft_motion_caption",
                     "bench_motion_caption"]
    assert datasets.get_dataset_config_names(str(synth)) == names
    declared = {info["config_name"]: info["features"] for info in meta["dataset_info"]}
    for config in meta["configs"]:
        name, kind = config["config_name"], config["config_name"].split("_")[0]
        assert declared[name] == features(kind)._to_yaml_list()
        loaded = datasets.load_dataset(str(synth), name, cache_dir=str(tmp_path / "c"))
        assert set(loaded) == {"train", "validation", "test"}
        for split in loaded:
            assert loaded[split].features == features(kind)
            path = next(f["path"] for f in config["data_files"] if f["split"] == split)
            assert path.endswith("-00000-of-00001.parquet")
            _same_rows(loaded[split], _jsonl(synth / path.replace("-00000-of-00001.parquet", ".jsonl")))
    default = datasets.load_dataset(str(synth), cache_dir=str(tmp_path / "c"))
    assert default["train"].features == features("sft")  # sft is the default config
    assert meta["license"] == "apache-2.0" and meta["task_categories"] == ["video-text-to-text"]
    assert meta["size_categories"] == ["n<1K"] and meta["pretty_name"] == "StreamPro-Synth"
    card = (synth / "README.md").read_text()
    assert "## Fields" in card and "`video` is a path relative to this folder" in card


def test_built_folders_load_for_every_kind_and_split(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in RAW))
    for kind in ("sft", "rl", "bench"):
        for split in ("test", "validation"):
            build(kind, raw, tmp_path / kind, split=split, progress=False)
        meta = _front_matter(tmp_path / kind)
        assert meta["license"] == "other" and meta["license_name"] == "source-annotation-licences"
        assert [c["config_name"] for c in meta["configs"]] == ["default"]
        assert {f["split"] for f in meta["configs"][0]["data_files"]} == {"test", "validation"}
        assert meta["dataset_info"][0]["features"] == features(kind)._to_yaml_list()
        card = (tmp_path / kind / "README.md").read_text()
        assert "non-commercial" in card and "`ovo-bench`" in card
        loaded = datasets.load_dataset(str(tmp_path / kind), cache_dir=str(tmp_path / "c"))
        assert set(loaded) == {"test", "validation"}
        _same_rows(loaded["test"], _jsonl(tmp_path / kind / "test.jsonl"))
        assert loaded["test"].features == features(kind)
        # The same rows through the package's reader of references.
        if kind == "bench":
            from streampro.metrics import validate_reference

            for row in loaded["test"]:
                validate_reference(row)


def test_rubric_ids_become_strings_and_size_buckets():
    from streampro.dataset_scripts.hub import _typed_row

    row = {"answers": [{"text": "x", "time": 1.0}], "rubric": [{"rubric_id": 3, "dimension": "coverage", "rubric": "r"}]}
    typed = _typed_row("rl", row)
    assert typed["rubric"][0]["rubric_id"] == "3" and typed["answers"][0] == {"text": "x", "time": 1.0, "start": None,
                                                                              "end": None}
    assert [size_category(n) for n in (0, 999, 1000, 250_000)] == ["n<1K", "n<1K", "1K<n<10K", "100K<n<1M"]
