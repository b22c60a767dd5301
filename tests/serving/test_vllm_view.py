"""The vLLM side that needs no vLLM: the served view, frame token counts, log-prob parsing, the HTTP client's errors."""

from __future__ import annotations

import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from streampro.errors import UserError
from streampro.serving.vllm_session import (
    VLLMClient,
    VLLMEngineError,
    _decision_probs,
    num_image_tokens,
    prefix_cache_hit_fraction,
)
from streampro.serving.vllm_view import VIEW_MARK, make_vllm_view


@pytest.mark.parametrize("backbone, architecture", [("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
                                                    ("qwen3_vl", "Qwen3VLForConditionalGeneration")])
def test_view_is_the_base_architecture_with_the_same_weights(tmp_path, backbone, architecture):
    from streampro.backbones import build_tiny_backbone

    ckpt = tmp_path / "ckpt"
    tb = build_tiny_backbone(backbone, streampro=True)
    tb.model.save_pretrained(ckpt)
    tb.processor.save_pretrained(ckpt)
    view = make_vllm_view(ckpt, tmp_path / "view")

    config = json.loads((view / "config.json").read_text())
    source = json.loads((ckpt / "config.json").read_text())
    assert config["architectures"] == [architecture] and config["model_type"] == backbone
    assert not {"auto_map", "backbone", "silence_token_id", "response_token_id"} & set(config)
    assert config["text_config"] == source["text_config"] and config["image_token_id"] == source["image_token_id"]
    weights = view / "model.safetensors"
    if backbone == "qwen2_5_vl":  # the names vLLM reads: linked
        assert weights.is_symlink() and weights.resolve() == (ckpt / "model.safetensors").resolve()
    else:  # Qwen3-VL: the released checkpoints' names, the same tensors
        from safetensors.torch import load_file

        ours, theirs = load_file(ckpt / "model.safetensors"), load_file(weights)
        assert {k.split(".")[0] for k in theirs} == {"model", "lm_head"}
        assert "model.visual.patch_embed.proj.weight" in theirs and "model.language_model.norm.weight" in theirs
        renamed = {k.replace("visual.", "model.visual.", 1) if k.startswith("visual.") else
                   k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k: v
                   for k, v in ours.items()}
        assert renamed.keys() == theirs.keys() and all(renamed[k].equal(theirs[k]) for k in theirs)
    tokenizer = json.loads((view / "tokenizer_config.json").read_text())
    assert "auto_map" not in tokenizer and tokenizer["processor_class"].endswith("Processor")
    vocab = json.loads((view / "tokenizer.json").read_text())["added_tokens"]
    assert {"</Silence>", "</Response>"} <= {t["content"] for t in vocab}  # the decision tokens travel with it
    image = json.loads((view / "preprocessor_config.json").read_text())
    assert image["size"] == tb.processor.image_processor.size  # the checkpoint's own frame sizes

    # Unchanged source: the view is kept; a new save of the checkpoint refreshes it.
    stamp = (view / VIEW_MARK).read_text()
    make_vllm_view(ckpt, view)
    assert (view / VIEW_MARK).read_text() == stamp
    os.utime(ckpt / "config.json", (1, 1))
    make_vllm_view(ckpt, view)
    assert (view / VIEW_MARK).read_text() != stamp
    assert not list(tmp_path.glob(".view.*"))  # no temporary folder left


def test_view_refuses_what_is_not_a_streampro_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        make_vllm_view(tmp_path, tmp_path / "view")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with pytest.raises(UserError, match="model_type is 'qwen2_5_vl'") as e:
        make_vllm_view(tmp_path, tmp_path / "view")
    assert "convert-backbone" in e.value.fix


@pytest.mark.parametrize("size", [(32, 32), (56, 84), (200, 120), (448, 448)])
def test_frame_token_count_matches_the_processor(tiny_dir, size):
    from streampro.loading import load_processor

    processor = load_processor(tiny_dir)
    frame = np.zeros((*size, 3), np.uint8)
    grid = processor.process_frames([frame])["image_grid_thw"]
    assert num_image_tokens(processor, *size) == processor.num_image_tokens(grid)[0]


def _choice(pairs):
    return {"logprobs": {"content": [{"token_id": pairs[0][0], "logprob": pairs[0][1],
                                      "top_logprobs": [{"token_id": t, "logprob": lp} for t, lp in pairs]}]}}


def test_p_response_from_the_decision_logprobs():
    p = 0.3
    assert _decision_probs(_choice([(5, np.log(1 - p)), (6, np.log(p))]), [5, 6]) == pytest.approx([1 - p, p])
    # three states (</Standby> = 7): renormalised over the three tokens, in (silence, response, standby) order
    assert _decision_probs(_choice([(7, np.log(0.5)), (5, np.log(0.2)), (6, np.log(0.3))]), [5, 6, 7]) == pytest.approx(
        [0.2, 0.3, 0.5])
    with pytest.raises(VLLMEngineError, match="processed_logprobs"):  # raw logprobs over the whole vocabulary
        _decision_probs(_choice([(5, np.log(0.5)), (6, np.log(0.1))]), [5, 6])
    with pytest.raises(VLLMEngineError, match="lack the </Response> token"):
        _decision_probs(_choice([(5, 0.0)]), [5, 6])
    with pytest.raises(VLLMEngineError, match="no log-probs"):
        _decision_probs({"logprobs": None}, [5, 6])


def test_prefix_cache_hit_fraction():
    before = {"vllm:prefix_cache_hits_total": 10.0, "vllm:prefix_cache_queries_total": 20.0}
    after = {"vllm:prefix_cache_hits_total": 40.0, "vllm:prefix_cache_queries_total": 60.0}
    assert prefix_cache_hit_fraction(before, after) == 0.75
    assert prefix_cache_hit_fraction(after, after) is None


class _Failing(BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self):
        type(self).calls += 1
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": {"message": "engine dead"}}')

    def log_message(self, *args):
        pass


def test_client_retries_then_names_the_server_and_the_reason():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        client = VLLMClient(url, retries=1)
        with pytest.raises(VLLMEngineError, match=r"failed 2 time\(s\): HTTP 503: engine dead") as e:
            client.generate([1, 2], [], {"max_tokens": 1})
        assert url in str(e.value) and _Failing.calls == 2
    finally:
        server.shutdown()
        server.server_close()
    # Nothing listens there any more: a connection error, after the same retries.
    with pytest.raises(VLLMEngineError, match="ConnectError"):
        VLLMClient(url, retries=0).generate([1], [], {"max_tokens": 1})


def test_missing_vllm_environment_says_how_to_make_one(tmp_path, monkeypatch):
    from streampro.serving.vllm_server import find_vllm_python

    monkeypatch.delenv("STREAMPRO_VLLM_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no vLLM environment") as e:
        find_vllm_python()
    assert "scripts/setup_vllm.sh" in e.value.fix and "--vllm-python" in e.value.fix


def test_server_that_dies_while_starting_names_its_log(tiny_dir, tmp_path):
    """A vLLM that exits at once (a bad option, a broken environment): the exit code and the log's tail."""
    from streampro.serving.vllm_server import VLLMServer

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'vllm: error: unrecognized arguments: --bogus'\nexit 3\n")
    fake.chmod(0o755)
    server = VLLMServer(tiny_dir, python=fake, extra_args=["--bogus"], startup_timeout=60)
    with pytest.raises(VLLMEngineError, match="exited with code 3 while starting") as e:
        server.start()
    assert "unrecognized arguments: --bogus" in str(e.value)
    log = str(e.value).split("its log: ")[1].splitlines()[0]
    assert os.path.isfile(log)  # kept for the user to read
    assert server.process is None
    shutil.rmtree(os.path.dirname(log))


def test_a_failed_step_leaves_the_session_as_it_was(tiny_dir):
    """The server fails on a frame: the session keeps its turns and its pending question (send the frame again)."""
    from streampro.serving.vllm_session import VLLMEngine

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        engine = VLLMEngine(f"http://127.0.0.1:{server.server_address[1]}", tiny_dir)
        engine.client.retries = 0
        session = engine.session()
        frame = np.zeros((32, 32, 3), np.uint8)
        assert session.step(frame).decision == "silence"  # before the question: nothing is sent
        session.ask("What is on screen?")
        with pytest.raises(VLLMEngineError, match="engine dead"):
            session.step(frame)
        assert session.next_turn_index == 1 and session._question == "What is on screen?" and not session.asked
        assert session.context_tokens == len(session.system_ids) + session.turns[0].num_tokens()
    finally:
        server.shutdown()
        server.server_close()
