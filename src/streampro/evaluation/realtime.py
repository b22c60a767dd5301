"""Real-time question answering: the prompt each converted benchmark question is asked with.

A real-time QA reference (``streampro.metrics.schema.validate_qa_reference``; written by
``streampro data convert ovo-bench|streamingbench``) is a question asked at ``question_time``
about the stream so far, answered at that moment: ``multiple_choice`` (options lettered A, B, C...
by position, the answer a letter) or ``open`` (OVO-Bench's forward checkpoints: a count, or
Yes / No). The protocols (:mod:`streampro.evaluation.protocols`, ``answer_at``) put the prompt
built here into the stream at the question's turn; the model's reply is recorded as free text
and the official scorer (``streampro.metrics.official``) parses the letter or the count from it.

The wording follows each benchmark's own evaluation code (its instruction to reply with the
letter only, its options layout, StreamingBench's running context for sequential questions,
OVO-Bench's instructions for the forward checkpoints), so that a checkpoint is asked what the
benchmark's published numbers asked.
"""

from __future__ import annotations

OVO_MC = (
    "Question: {question}\nOptions:\n{options}\n\n"
    "Respond only with the letter of the correct option (e.g. A, B, C). Do not add any other text."
)
STREAMINGBENCH_MC = (
    "You are given frames of a video and a multiple-choice question about it. Choose the best of the "
    "options and respond with only its letter.\n\n{context}Question: {question}\n\nOptions:\n{options}\n\n"
    "The best option is:"
)
STREAMINGBENCH_SQA_CONTEXT = "{context}\n\nAnswer the question below; do not confuse it with the earlier ones.\n"
# OVO-Bench's forward active-responding checkpoints (open answers), by task code.
OVO_FORWARD = {
    "REC": (
        "People in this video may repeat one kind of action; 'they' below means whoever performs it. Count "
        "how many times it has been performed so far, all people together; one complete motion counts as one.\n"
        "{question}\nAnswer with a single number (0, 1, 2, ...) and nothing else."
    ),
    "SSR": (
        "This is a tutorial video made of a sequence of steps. One of its steps is:\n{question}\n"
        "Is the person performing this step right now? Answer only Yes or No."
    ),
    "CRR": (
        "{question}\nDo the frames so far, the latest ones above all, show enough to answer this question? "
        "Answer only Yes or No."
    ),
}
OPEN = "{context}{question}"


def option_letter(i: int) -> str:
    return chr(ord("A") + i)


def question_prompt(ref: dict) -> str:
    """The text asked at the question's turn for one validated real-time QA reference."""
    context = ref.get("context") or ""
    if ref["kind"] == "multiple_choice":
        if ref["benchmark"] == "ovo-bench":
            options = "; ".join(f"{option_letter(i)}. {o}" for i, o in enumerate(ref["options"])) + ";"
            return OVO_MC.format(question=ref["question"], options=options)
        options = "\n".join(f"{option_letter(i)}. {o}" for i, o in enumerate(ref["options"]))
        context = STREAMINGBENCH_SQA_CONTEXT.format(context=context) if context else ""
        return STREAMINGBENCH_MC.format(context=context, question=ref["question"], options=options)
    if ref["benchmark"] == "ovo-bench" and ref["task"] in OVO_FORWARD:
        return OVO_FORWARD[ref["task"]].format(question=ref["question"])
    return OPEN.format(context=f"{context}\n" if context else "", question=ref["question"])
