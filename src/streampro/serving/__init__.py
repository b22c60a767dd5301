"""Serving StreamPro models: the vLLM engine (a client of a vLLM server) and ``streampro serve``.

- :mod:`~streampro.serving.vllm_view`: the view of a StreamPro checkpoint that vLLM serves.
- :mod:`~streampro.serving.vllm_server`: start and stop a vLLM server on that view.
- :mod:`~streampro.serving.vllm_session`: streaming sessions on a vLLM server, the PyTorch engine's
  interface and events (docs/vllm.md).
"""
