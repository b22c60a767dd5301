"""The metric's Space widget: paste predictions and references as JSON, pick a judge, get StreamPro-F1.

Run locally with ``python app.py`` (from this folder or anywhere); on the Hub it is the Space's
``app_file``. It loads ``streampro_f1.py`` next to this file, so the widget scores with the copy it
ships with, offline. evaluate's stock ``launch_gradio_widget`` reads only flat features and does
not run on Gradio 6, so the widget is this small ``gr.Interface`` instead.
"""

import json
from pathlib import Path

import evaluate
import gradio as gr

module = evaluate.load(str(Path(__file__).with_name("streampro_f1.py")))

EXAMPLE_PREDICTIONS = [[{"time": 12.0, "text": "The door is open now."}]]
EXAMPLE_REFERENCES = [
    {
        "id": "s1",
        "task": "OU",
        "question": "Tell me when the door opens.",
        "question_time": 0.0,
        "video": "v.mp4",
        "duration": 30.0,
        "answers": [{"text": "The door is open now.", "time": 10.0}],
    }
]
OFFLINE_JUDGES = ["lexical", "exact", "contains", "embedding"]


def score(predictions_json: str, references_json: str, judge: str) -> dict:
    """StreamPro-F1 of the pasted samples; a malformed input becomes a message in the app."""
    try:
        predictions, references = json.loads(predictions_json), json.loads(references_json)
        return module.compute(predictions=predictions, references=references, judge=judge)
    except (ValueError, TypeError, ImportError) as e:  # JSON, format and missing-judge errors
        raise gr.Error(str(e)) from None


demo = gr.Interface(
    fn=score,
    inputs=[
        gr.Code(json.dumps(EXAMPLE_PREDICTIONS, indent=1), language="json", label="predictions (one list per sample)"),
        gr.Code(json.dumps(EXAMPLE_REFERENCES, indent=1), language="json", label="references (one per sample)"),
        gr.Dropdown(OFFLINE_JUDGES, value="lexical", label="judge"),
    ],
    outputs=gr.JSON(label="StreamPro-F1 (0-100)"),
    title="StreamPro-F1",
    description=module.info.description,
    article=module.info.inputs_description,
)

if __name__ == "__main__":
    demo.launch()
