"""StreamPro: proactive streaming video language models on the Hugging Face stack.

Sub-packages map the repository's top-level folders under one namespace:
``streampro.modeling_streampro`` (model + Hub remote code), ``streampro.metrics``
(StreamPro-F1), ``streampro.dataset_scripts`` (data), ``streampro.trainer`` (SFT / GRPO),
``streampro.space`` (Gradio app) and ``streampro.evaluation`` (benchmark harness).
"""

__version__ = "0.1.0"
