"""How a model turns one video stream and one question into timed answers.

The protocols share one interface, ``protocol.run(frames, question, question_time) ->
SampleOutput`` (predictions ``[{time, text}]`` for StreamPro-F1 plus compact per-frame events):

- :class:`StreamProProtocol` — a StreamPro checkpoint streamed with its own decision tokens
  (``model.generate_stream``): one decision per frame, ``p_response`` recorded.
- :class:`DecisionTreeProtocol` — docs/method.md §3's protocol for plain, offline Qwen2.5-VL / Qwen3-VL
  checkpoints (transformers' own classes, no decision tokens), or a StreamPro checkpoint used as a plain
  model (its ``</Response>`` forced first, as the activation protocol's answerer). Frames arrive one by one; before
  the question nothing happens; from the question's turn on, every frame asks the model whether
  the frames so far suffice to answer without guessing. No → "wait". Yes → the model answers,
  and the answer is emitted only when it differs from its previous answer.
- ``ActivationProtocol`` (:mod:`streampro.evaluation.activation`, docs/activation.md) — StreamBridge's
  activation model decides when, a plain answerer answers from a round-decayed memory buffer.

Decisions of the decision-tree protocol (documented in docs/evaluation.md):

- The prompt holds the most recent ``window_frames`` frames (default :data:`DECISION_TREE_WINDOW`),
  each preceded by its time tag (``time_tag`` of ``processing_streampro``), as images in one user
  turn rendered with the checkpoint's own chat template; the model re-reads the window every
  step (no KV reuse: an offline model is not built for it).
- The yes/no decision is constrained to two tokens: ``p_yes`` = softmax over the logits of the
  first token of ``"Yes"`` and of ``"No"`` at the first generated position (``generate`` with
  ``output_logits``); "sufficient" means ``p_yes > 0.5``, or ``p_yes >= response_threshold``
  when one is given. An unconstrained free-text reply would almost never parse on small models.
- The answer is greedy ``generate`` up to ``max_new_tokens``, stopped at ``<|im_end|>``, decoded
  without special tokens and stripped; an empty answer, or one equal to the previous emitted
  answer, is not emitted.

Real-time question answering (``protocol.answer_at(frames, questions) -> QAOutput``): each question
is asked at its own time about the stream so far and answered at that moment; all the questions on
one video are answered in one pass over its frames, and each answer sees none of the others.

- StreamPro: the question enters the user turn of the frame at its time and the answer is decoded
  on that turn, the response decision forced (:class:`QASession`); the stream then goes on from
  the state before the question, as if it had not been asked. The stream itself stays silent
  (no question is ever asked on it).
- Decision tree: at the question's frame the model answers from the most recent ``window_frames``
  frames with the question as the whole instruction (no yes/no step: the answer is due now).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from streampro.modeling_streampro.modeling_streampro import StreamEvent, StreamSession
from streampro.modeling_streampro.time_streampro import time_tag, turn_index_for_time, turn_time

logger = logging.getLogger(__name__)

PROTOCOLS = ("streampro", "decision-tree", "activation")  # activation: streampro.evaluation.activation
# Recent frames shown to an offline model at each step of the decision-tree protocol.
DECISION_TREE_WINDOW = 8
# The streaming window of docs/method.md §1 (dialogue turns kept in context).
STREAMPRO_WINDOW = 200

DECISION_TREE_SYSTEM = (
    "You are watching a video stream. The frames seen so far are shown in order, each after its time "
    "interval in seconds."
)
SUFFICIENCY_PROMPT = (
    "Question: {question}\nDo the frames so far show enough to answer this question without guessing? "
    "Answer Yes or No."
)
ANSWER_PROMPT = "Question: {question}\nAnswer the question based on the frames so far, briefly."
IMAGE_PAD = "<|image_pad|>"
END_OF_TURN = "<|im_end|>"


@dataclass
class SampleOutput:
    """What a protocol produced for one sample."""

    predictions: list[dict] = field(default_factory=list)  # [{"time", "text"}], time order
    events: list[dict] = field(default_factory=list)  # one per frame: {"t", "d", "p"}


@dataclass
class QAOutput:
    """Real-time answers, one per question in the order given: ``{"time", "text", "p"}``.

    ``time`` is the turn time the answer was decoded at (the question's turn), ``p`` the model's
    own ``p_response`` there (StreamPro; ``None`` for the decision tree); ``None`` instead of a dict
    for a question whose turn the stream never reached (:func:`beyond_stream_message`). ``frames``
    counts the frames read from the stream (one pass: never more than the last question's turn + 1).
    """

    answers: list[dict] = field(default_factory=list)
    frames: int = 0


def _question_turns(questions, fps: float) -> dict[int, list[int]]:
    """Question positions by the turn they are asked on."""
    if not questions:
        raise ValueError("no questions to answer")
    at: dict[int, list[int]] = {}
    for i, (t, text) in enumerate(questions):
        if not str(text).strip():
            raise ValueError(f"question {i} has an empty text")
        at.setdefault(turn_index_for_time(float(t), fps), []).append(i)
    return at


def beyond_stream_message(question_time: float, frames: int, fps: float) -> str:
    return (f"question time {question_time} s is beyond the stream ({frames} frames, "
            f"{turn_time(frames - 1, fps):g} s at {fps} fps)")


def timed_user_text(question: str, question_time: float, user_turns: list[dict], fps: float) -> list[tuple[float, str]]:
    """The question and the later user turns as ``(time, text)``, one entry per turn, in time order.

    Texts falling on one turn are joined with newlines in their order (the question first), so
    that the engine's time sort cannot reorder them.
    """
    items = [(float(question_time), question)] + sorted(((float(u["time"]), str(u["content"])) for u in user_turns),
                                                        key=lambda x: x[0])
    by_turn: dict[int, tuple[float, list[str]]] = {}
    for t, text in items:
        by_turn.setdefault(turn_index_for_time(t, fps), (t, []))[1].append(text)
    return [(t, "\n".join(texts)) for _, (t, texts) in sorted(by_turn.items())]


def _event(time: float, decision: str, p: float | None) -> dict:
    # p rounded so that the file stays small; it is never scored.
    return {"t": time, "d": decision, "p": None if p is None else round(float(p), 6)}


def _split_frame(frame, k: int, fps: float):
    """A ``(time, image)`` pair from ``streampro.video`` or a bare image, checked against turn k."""
    if isinstance(frame, tuple):
        t, image = frame
        if abs(float(t) - turn_time(k, fps)) > 1e-3:
            raise ValueError(f"frame {k} has time {t} s but turn {k} at {fps} fps is at {turn_time(k, fps):g} s")
        return image
    return frame


class QASession(StreamSession):
    """The engine's ``StreamSession`` with one addition, :meth:`answer_now`; nothing is overridden.

    ``answer_now`` answers a question on the current frame and then puts the session back where
    it was, so that one pass over a stream answers many questions, each as if it were the only
    one. The rollback keeps what a step changes: the turn list, the tokens pending for the cache,
    the next M-RoPE position and the cache, cut back to its length (``DynamicCache.crop``; when
    the step made room by dropping turns it rebuilt the cache as a new object, and the old one,
    untouched, is kept). Only the window memory is supported (round-decay pools kept turns in place).
    """

    def answer_now(self, frame, question: str) -> StreamEvent:
        """Ask ``question`` on this frame's turn, decode the answer there (decision forced to respond), roll back."""
        if self.memory != "window":
            raise ValueError("real-time answers need memory='window'")
        saved = (list(self.turns), list(self.pending_ids), self.next_position, self.cache,
                 self.cache.get_seq_length(), self.dropped_turns, self.num_refreshes, self._question,
                 self.asked, self.response_threshold)
        try:
            self._question, self.asked = None, False
            self.ask(question)
            self.response_threshold = 0.0  # p_response >= 0 always: the engine's own rule forces </Response>
            return self.step(frame)
        finally:
            (self.turns, self.pending_ids, self.next_position, cache, length, self.dropped_turns,
             self.num_refreshes, self._question, self.asked, self.response_threshold) = saved
            extra = cache.get_seq_length() - length
            if extra > 0:  # transformers 5's crop takes the number of tokens to remove, negated
                cache.crop(-extra)
            self.cache = cache


class StreamProProtocol:
    """A StreamPro checkpoint streamed with its decision tokens (``model.generate_stream``)."""

    name = "streampro"

    def __init__(self, model, processor, *, fps: float = 1.0, window_turns: int = STREAMPRO_WINDOW,
                 max_new_tokens: int = 64, response_threshold: float | None = None):
        self.model, self.processor = model, processor
        self.fps, self.window_turns = fps, window_turns
        self.max_new_tokens, self.response_threshold = max_new_tokens, response_threshold

    def run(self, frames, question: str, question_time: float, user_turns: list[dict] | None = None) -> SampleOutput:
        """Stream ``frames`` with ``question`` asked at ``question_time``.

        ``user_turns`` (``[{"time", "content"}]``, e.g. ProactiveVideoQA's subtitles) enter the
        stream as further user text at their own turns (``generate_stream``'s timed questions).
        """
        return _sample_output(self.model.generate_stream(
            frames, timed_user_text(question, question_time, user_turns, self.fps) if user_turns else question,
            processor=self.processor, question_time=question_time, **self._options(),
        ))

    def _options(self) -> dict:
        return {"fps": self.fps, "window_turns": self.window_turns, "max_new_tokens": self.max_new_tokens,
                "response_threshold": self.response_threshold}

    def run_batch(self, samples: list[tuple]) -> list[SampleOutput]:
        """``run`` over several ``(frames, question, question_time, user_turns)`` in one batched engine.

        ``model.generate_streams`` steps the streams together (docs/engine.md, "Batched sessions");
        the outputs are ``run``'s on each sample (decisions and texts exactly, ``p`` to float32 rounding).
        """
        streams = self.model.generate_streams(
            [frames for frames, _, _, _ in samples],
            [timed_user_text(q, t, u, self.fps) if u else q for _, q, t, u in samples],
            processor=self.processor, question_times=[t for _, _, t, _ in samples], **self._options(),
        )
        return [_sample_output(events) for events in streams]

    def answer_at(self, frames, questions: list[tuple[float, str]]) -> QAOutput:
        """Answer each ``(time, text)`` question at its turn, in one pass (module docstring)."""
        at = _question_turns(questions, self.fps)
        last = max(at)
        session = self._qa_session()
        out = QAOutput(answers=[None] * len(questions))
        k = -1
        with torch.no_grad():
            for k, frame in enumerate(frames):
                out.frames += 1
                for i in at.get(k, []):
                    ev = session.answer_now(frame, questions[i][1])
                    out.answers[i] = {"time": ev.time, "text": ev.text, "p": round(float(ev.p_response), 6)}
                if k == last:
                    break
                session.step(frame)  # silent: no question is ever asked on the stream itself
        if k < 0:
            raise ValueError("no frames: the stream is empty")
        return out

    def _qa_session(self):
        return QASession(self.model, self.processor, fps=self.fps, window_turns=self.window_turns,
                         max_new_tokens=self.max_new_tokens)


class VLLMStreamProProtocol(StreamProProtocol):
    """The StreamPro protocol on a vLLM server (``streampro.serving.vllm_session``): the same records.

    ``run_batch`` keeps its samples in flight together (one thread per stream; the server batches
    their requests), instead of one padded forward per frame.
    """

    def __init__(self, engine, *, fps: float = 1.0, window_turns: int = STREAMPRO_WINDOW, max_new_tokens: int = 64,
                 response_threshold: float | None = None):
        super().__init__(None, engine.processor, fps=fps, window_turns=window_turns, max_new_tokens=max_new_tokens,
                         response_threshold=response_threshold)
        self.engine = engine

    def run(self, frames, question: str, question_time: float, user_turns: list[dict] | None = None) -> SampleOutput:
        return _sample_output(self.engine.generate_stream(
            frames, timed_user_text(question, question_time, user_turns, self.fps) if user_turns else question,
            question_time=question_time, **self._options(),
        ))

    def run_batch(self, samples: list[tuple]) -> list[SampleOutput]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(samples)) as pool:
            return list(pool.map(lambda sample: self.run(*sample), samples))

    def _qa_session(self):
        return self.engine.session(fps=self.fps, window_turns=self.window_turns, max_new_tokens=self.max_new_tokens)


def _sample_output(events) -> SampleOutput:
    """A stream's events as predictions (its responses) and compact per-frame events."""
    out = SampleOutput()
    for ev in events:
        decision = ev.decision if ev.p_response is not None else "before_question"
        out.events.append(_event(ev.time, decision, ev.p_response))
        if ev.decision == "response":
            out.predictions.append({"time": ev.time, "text": ev.text})
    return out


# --------------------------------------------------------------------------------------------
# Offline baselines
# --------------------------------------------------------------------------------------------


class BaselineProcessor:
    """Tokenizer + PIL Qwen image processor of a plain Qwen-VL checkpoint (no torchvision needed).

    transformers' own ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` need torchvision for their
    video processors; frames are fed as images here, so the image processor is all we need.
    ``__call__`` expands each ``<|image_pad|>`` of the rendered chat text for one image, in order.
    """

    def __init__(self, tokenizer, image_processor):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        vocab = tokenizer.get_vocab()
        missing = [t for t in (IMAGE_PAD, END_OF_TURN, "<|vision_start|>", "<|vision_end|>") if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks the Qwen-VL tokens {missing}; is this a Qwen2.5-VL / Qwen3-VL checkpoint?")
        if tokenizer.chat_template is None:
            raise ValueError("the tokenizer has no chat template; the checkpoint needs chat_template.jinja or .json")
        self.image_token_id = vocab[IMAGE_PAD]
        self.end_of_turn_id = vocab[END_OF_TURN]

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> BaselineProcessor:
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        model_dir = Path(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if tokenizer.chat_template is None:
            # Qwen-VL repos keep the template beside the processor, not in the tokenizer config.
            if (model_dir / "chat_template.jinja").is_file():
                tokenizer.chat_template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
            elif (model_dir / "chat_template.json").is_file():
                tokenizer.chat_template = json.loads((model_dir / "chat_template.json").read_text())["chat_template"]
        return cls(tokenizer, Qwen2VLImageProcessorPil.from_pretrained(model_dir))

    def __call__(self, text: str, images: list) -> dict:
        vision = self.image_processor(images=images, return_tensors="pt")
        merge = self.image_processor.merge_size ** 2
        counts = [int(n) // merge for n in vision["image_grid_thw"].prod(-1).tolist()]
        pieces = text.split(IMAGE_PAD)
        if len(pieces) - 1 != len(counts):
            raise ValueError(f"the prompt has {len(pieces) - 1} image placeholders for {len(counts)} images")
        expanded = pieces[0] + "".join(IMAGE_PAD * n + piece for n, piece in zip(counts, pieces[1:]))
        enc = self.tokenizer(expanded, add_special_tokens=False, return_tensors="pt")
        enc["mm_token_type_ids"] = (enc["input_ids"] == self.image_token_id).int()
        enc.update(vision)
        return enc

    def first_token(self, word: str) -> int:
        return self.tokenizer(word, add_special_tokens=False)["input_ids"][0]


def load_baseline(model_dir: str | Path, device: str | torch.device, dtype=None):
    """(model, processor) of a plain Qwen2.5-VL / Qwen3-VL checkpoint for the decision-tree protocol."""
    from transformers import AutoModelForImageTextToText

    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a model directory (no config.json)")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type not in ("qwen2_5_vl", "qwen3_vl"):
        raise ValueError(
            f"--protocol decision-tree expects a plain Qwen2.5-VL / Qwen3-VL checkpoint, but {model_dir} has "
            f"model_type {model_type!r}; evaluate StreamPro checkpoints with --protocol streampro"
        )
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    return model, BaselineProcessor.from_pretrained(model_dir)


class DecisionTreeProtocol:
    """docs/method.md §3's decision-tree protocol for offline models (decisions in the module docstring)."""

    name = "decision-tree"

    def __init__(self, model, processor: BaselineProcessor, *, fps: float = 1.0,
                 window_frames: int = DECISION_TREE_WINDOW, max_new_tokens: int = 64,
                 response_threshold: float | None = None, answer_prefix: str = ""):
        if window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {window_frames}")
        self.model, self.processor = model, processor
        self.fps, self.window_frames = fps, window_frames
        self.max_new_tokens, self.response_threshold = max_new_tokens, response_threshold
        self.answer_prefix = answer_prefix  # "</Response>" for a StreamPro checkpoint (docs/evaluation.md)
        self.yes_id, self.no_id = processor.first_token("Yes"), processor.first_token("No")
        if self.yes_id == self.no_id:
            raise ValueError("'Yes' and 'No' start with the same token in this tokenizer; the yes/no decision needs two")
        self.device = next(model.parameters()).device

    def _inputs(self, window, instruction: str) -> dict:
        content = []
        for k, _ in window:
            content += [{"type": "text", "text": time_tag(k, self.fps)}, {"type": "image"}]
        content.append({"type": "text", "text": instruction})
        messages = [{"role": "system", "content": DECISION_TREE_SYSTEM}, {"role": "user", "content": content}]
        text = self.processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = self.processor(text + self.answer_prefix, [image for _, image in window])
        return {k: v.to(self.device) for k, v in enc.items()}

    def _generate(self, inputs: dict, max_new_tokens: int, **kwargs):
        eot = self.processor.end_of_turn_id
        pad = self.processor.tokenizer.pad_token_id
        return self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                   eos_token_id=eot, pad_token_id=eot if pad is None else pad, **kwargs)

    @torch.no_grad()
    def p_yes(self, window, question: str) -> float:
        """P("Yes") against P("No") for "do the frames so far suffice?"."""
        inputs = self._inputs(window, SUFFICIENCY_PROMPT.format(question=question))
        out = self._generate(inputs, 1, output_logits=True, return_dict_in_generate=True)
        two = out.logits[0][0, [self.yes_id, self.no_id]].float()
        return float(torch.softmax(two, dim=-1)[0])

    @torch.no_grad()
    def answer(self, window, question: str) -> str:
        return self.reply(window, ANSWER_PROMPT.format(question=question))

    @torch.no_grad()
    def reply(self, window, instruction: str) -> str:
        """Greedy answer to ``instruction`` after the frames of ``window``."""
        inputs = self._inputs(window, instruction)
        seq = self._generate(inputs, self.max_new_tokens)
        new = seq[0, inputs["input_ids"].shape[1]:]
        return self.processor.tokenizer.decode(new, skip_special_tokens=True).strip()

    def answer_at(self, frames, questions: list[tuple[float, str]]) -> QAOutput:
        """Answer each ``(time, text)`` question from the frames so far (windowed), in one pass."""
        at = _question_turns(questions, self.fps)
        last = max(at)
        window = deque(maxlen=self.window_frames)  # (turn index, image)
        out = QAOutput(answers=[None] * len(questions))
        k = -1
        for k, frame in enumerate(frames):
            out.frames += 1
            window.append((k, _split_frame(frame, k, self.fps)))
            for i in at.get(k, []):
                text = self.reply(list(window), questions[i][1])
                out.answers[i] = {"time": turn_time(k, self.fps), "text": text, "p": None}
            if k == last:
                break
        if k < 0:
            raise ValueError("no frames: the stream is empty")
        return out

    def run(self, frames, question: str, question_time: float, user_turns: list[dict] | None = None) -> SampleOutput:
        """The decision tree over ``frames``; ``user_turns`` heard so far are quoted before the question."""
        out = SampleOutput()
        q_turn = turn_index_for_time(question_time, self.fps)
        heard = sorted(((turn_index_for_time(float(u["time"]), self.fps), u["content"]) for u in user_turns or []),
                       key=lambda x: x[0])
        window = deque(maxlen=self.window_frames)  # (turn index, image)
        previous: str | None = None
        k = -1
        for k, frame in enumerate(frames):
            window.append((k, _split_frame(frame, k, self.fps)))
            t = turn_time(k, self.fps)
            if k < q_turn:
                out.events.append(_event(t, "before_question", None))
                continue
            said = [text for turn, text in heard if turn <= k]
            if said:  # the user turns so far, then the question
                question_now = "\n".join(said) + "\n" + question
            else:
                question_now = question
            p = self.p_yes(list(window), question_now)
            sufficient = p >= self.response_threshold if self.response_threshold is not None else p > 0.5
            if not sufficient:
                out.events.append(_event(t, "wait", p))
                continue
            text = self.answer(list(window), question_now)
            if not text or text == previous:
                out.events.append(_event(t, "same_answer" if text else "empty_answer", p))
                continue
            previous = text
            out.events.append(_event(t, "response", p))
            out.predictions.append({"time": t, "text": text})
        if k < 0:
            raise ValueError("no frames: the stream is empty")
        if q_turn > k:
            raise ValueError(
                f"question time {question_time} s is beyond the stream ({k + 1} frames, {turn_time(k, self.fps):g} s "
                f"at {self.fps} fps)"
            )
        return out


def build_protocol(name: str, model_dir: str | Path | None, *, device, fps: float, window_turns: int,
                   max_new_tokens: int, response_threshold: float | None, vllm_url: str | None = None,
                   activation_model: str | Path | None = None, token_budget: int | None = None):
    """Load the model for protocol ``name`` and wrap it (``vllm_url``: the StreamPro protocol on that vLLM server).

    ``activation_model`` / ``token_budget``: the activation protocol's scorer checkpoint and answerer budget.
    """
    if vllm_url is not None:
        if name != "streampro":
            raise ValueError(f"--engine vllm runs the streampro protocol, not {name!r}")
        from streampro.serving.vllm_session import VLLMEngine

        return VLLMStreamProProtocol(VLLMEngine(vllm_url, model_dir), fps=fps, window_turns=window_turns,
                                     max_new_tokens=max_new_tokens, response_threshold=response_threshold)
    if name == "streampro":
        from streampro.loading import load_model_and_processor

        model, processor = load_model_and_processor(model_dir, device=str(device))
        return StreamProProtocol(model, processor, fps=fps, window_turns=window_turns,
                                 max_new_tokens=max_new_tokens, response_threshold=response_threshold)
    if name == "decision-tree":
        if model_dir is None:
            raise ValueError("--protocol decision-tree needs --model (a plain Qwen2.5-VL / Qwen3-VL checkpoint)")
        # A plain Qwen-VL checkpoint, or a StreamPro one answering as a plain model (as in the activation protocol).
        from streampro.evaluation.activation import load_answerer

        model, processor, prefix = load_answerer(model_dir, device)
        return DecisionTreeProtocol(model, processor, fps=fps, window_frames=window_turns, max_new_tokens=max_new_tokens,
                                    response_threshold=response_threshold, answer_prefix=prefix)
    if name == "activation":
        from streampro.evaluation.activation import build_activation_protocol

        return build_activation_protocol(model_dir, activation_model, device=device, fps=fps, window_frames=window_turns,
                                         max_new_tokens=max_new_tokens, threshold=response_threshold,
                                         token_budget=token_budget)
    raise ValueError(f"unknown protocol {name!r}; use one of {list(PROTOCOLS)}")


def default_window(protocol: str) -> int:
    """``--window-turns`` when not given: 200 turns (docs/method.md §1), the decision-tree or the activation frame window."""
    if protocol == "activation":
        from streampro.evaluation.activation import ACTIVATION_WINDOW

        return ACTIVATION_WINDOW
    return STREAMPRO_WINDOW if protocol == "streampro" else DECISION_TREE_WINDOW
