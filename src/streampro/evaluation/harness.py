"""The evaluation loop: stream every benchmark sample, append predictions, resume, shard, merge.

Files in the run directory (``RUN_DIR``):

- ``run_config.json`` — the arguments that shape the results (and a hash of the benchmark file).
  A run directory holds one evaluation: starting again with different arguments is refused.
- ``predictions.jsonl`` — one line per finished sample, each line flushed and fsynced as soon as
  the sample finishes. A proactive sample (timed answers, StreamPro-F1):
  ``{"id", "predictions": [{time, text}], "events": [{t, d, p}], "error": null | {"kind", "message"}}``;
  a real-time question (``kind`` in its reference, :mod:`streampro.evaluation.realtime`):
  ``{"id", "answer": text, "time", "p", "error"}`` (``answer`` ``null`` when errored). With several
  processes each rank appends to ``predictions.rank{r}.jsonl``; rank 0 merges them in benchmark
  order when all are done.
- ``report.json``, ``report.md``, ``plots/`` — written by :mod:`streampro.evaluation.report`.

Work units: a proactive sample is streamed on its own; the real-time questions on one video form
one unit, answered in one pass over its frames (each answer independent of the others, so a unit
cut short by a crash is finished later by answering only its missing questions, with the same
answers). Resume: a restarted run reads every predictions file in ``RUN_DIR``, skips the samples
already there, and cuts a torn last line (a write interrupted by ``kill -9``) before appending.
Samples are never duplicated: the merge keeps one record per id. Sharding: with ``world``
processes, rank r takes units i with ``i % world == r``; the result does not depend on ``world``
(the merge restores benchmark order).

Bad inputs (a reference that fails validation, e.g. an unknown task; reference times that cannot
be right — a question after the video's duration, an answer before its question or after the
duration; a missing video; a video that cannot be decoded; a question after the end of the
video's frames) are recorded on the sample's line as ``error`` and the run goes on — unless
``strict``, which stops at the first one. Errored samples are left out of every average and
counted in the report (never scored as zeros).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from streampro.errors import UserError
from streampro.jsonl import iter_jsonl

logger = logging.getLogger(__name__)

CONFIG_FILE = "run_config.json"
PREDICTIONS_FILE = "predictions.jsonl"
RANK_PATTERN = "predictions.rank*.jsonl"
# How often rank 0 looks at the other ranks' files while it waits for them.
MERGE_POLL_SECONDS = 1.0
ERROR_KINDS = ("invalid_reference", "missing_video", "video_error", "stream_error")


class RunError(RuntimeError):
    """A problem with the run as a whole (bad benchmark file, mismatched run directory)."""


class SampleError(Exception):
    """One sample could not be evaluated; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message


@dataclass(frozen=True)
class EvalConfig:
    """Everything that shapes a run's results; stored as ``run_config.json``."""

    model: str  # resolved checkpoint directory
    benchmark: str  # resolved path of the references JSONL
    benchmark_sha256: str
    video_root: str
    protocol: str
    judge: dict  # judge name and its options
    limit: int | None
    fps: float
    window_turns: int
    max_new_tokens: int
    response_threshold: float | None
    max_pixels: int | None
    # Control run (docs/evaluation.md, "Shuffled-frames control"): frames in a seeded random order.
    shuffle_frames: int | None = None
    # `--benchmark-suite NAME`: the official scoring of that benchmark (``benchmark`` then lists the
    # reference files, joined by ``os.pathsep``, and ``limit`` applies per task).
    suite: str | None = None
    # The engine the model runs on: "pytorch" (in this process) or "vllm" (a vLLM server, docs/vllm.md).
    engine: str = "pytorch"
    # --protocol activation (docs/activation.md): the activation checkpoint and the answerer's token budget.
    activation_model: str | None = None
    token_budget: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Benchmark and run directory
# --------------------------------------------------------------------------------------------


def read_benchmark(path: Path, limit: int | None = None) -> list[dict]:
    """The benchmark's reference objects in file order (first ``limit``).

    Only what resuming needs is checked here (valid JSON, a unique ``id``); the rest of each
    reference is validated per sample, so one bad sample does not stop the run.
    """
    if not path.is_file():
        raise RunError(f"--benchmark {path}: no such file; pass a references JSONL (`streampro data build bench`)")
    from streampro.dataset_scripts.manifest import check_complete

    check_complete(path)  # a benchmark from an interrupted `data synth` / `data build` is refused
    refs, seen = [], {}
    for lineno, obj in iter_jsonl(path):  # a line that is not JSON: UserError naming file:line:column
        if not isinstance(obj, dict) or isinstance(obj.get("id"), bool) or not isinstance(obj.get("id"), (str, int)):
            raise RunError(f"{path}:{lineno}: every reference needs an 'id' (string); got {str(obj)[:80]}")
        sample_id = str(obj["id"])
        if sample_id in seen:
            raise RunError(f"{path}:{lineno}: duplicate id {sample_id!r} (first on line {seen[sample_id]}); ids must be unique")
        seen[sample_id] = lineno
        refs.append(obj)
        if limit is not None and len(refs) >= limit:
            break
    if not refs:
        raise RunError(f"{path}: no samples")
    return refs


def files_sha256(paths: list[Path]) -> str:
    """One digest for a list of files (their digests, in order)."""
    return hashlib.sha256("".join(file_sha256(p) for p in paths).encode()).hexdigest()


def task_key(ref: dict) -> str:
    """The benchmark task a reference belongs to (per-task ``--limit`` of a suite)."""
    meta = ref.get("meta") if isinstance(ref.get("meta"), dict) else {}
    if "kind" in ref:
        return f"{ref.get('kind')}:{ref.get('task')}"
    return f"proactive:{meta.get('benchmark_task', ref.get('task'))}"


def read_suite(paths: list[Path], benchmark: str, limit_per_task: int | None = None) -> list[dict]:
    """The references of a benchmark suite, from several converted files, in file order.

    Every record must belong to ``benchmark`` (``benchmark`` of a QA record, ``meta.benchmark`` of a
    proactive one); ids are unique over all the files. ``limit_per_task`` keeps the first N of each task.
    """
    refs, seen, per_task = [], {}, {}
    for path in paths:
        for ref in read_benchmark(path):
            meta = ref.get("meta") if isinstance(ref.get("meta"), dict) else {}
            owner = ref.get("benchmark") if "kind" in ref else meta.get("benchmark")
            sample_id = str(ref["id"])
            if owner != benchmark:
                raise RunError(f"{path}: sample {sample_id!r} belongs to benchmark {owner!r}, not {benchmark!r}; "
                               f"pass only files converted with `streampro data convert {benchmark}`")
            if sample_id in seen:
                raise RunError(f"{path}: duplicate id {sample_id!r} (also in {seen[sample_id]}); ids must be unique")
            seen[sample_id] = path
            key = task_key(ref)
            per_task[key] = per_task.get(key, 0) + 1
            if limit_per_task is None or per_task[key] <= limit_per_task:
                refs.append(ref)
    return refs


def check_run_config(out_dir: Path, config: EvalConfig) -> None:
    """Write ``run_config.json``, or check that the existing one matches ``config``."""
    from streampro.dataset_scripts.manifest import remove_stale_temporaries

    path = out_dir / CONFIG_FILE
    wanted = config.to_dict()
    remove_stale_temporaries(out_dir)  # what a killed run was writing; it is written again
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        # A field added since the run started has its default there (e.g. engine="pytorch").
        defaults = {f.name: f.default for f in fields(EvalConfig) if f.default is not MISSING}
        stored = {**defaults, **stored}
        diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        if diff:
            raise UserError(
                f"{out_dir} holds a run made with different arguments",
                "resume with the original arguments, or pass a new --out directory",
                details=[f"{k}: run directory has {stored.get(k)!r}, this command has {wanted.get(k)!r}" for k in diff],
            )
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    # Several ranks may get here at once: each writes its own temporary file, then renames.
    tmp = out_dir / f".{CONFIG_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_records(path: Path, *, repair: bool) -> list[dict]:
    """The complete records of a predictions file.

    A last line without its newline is a write cut short (``kill -9``): with ``repair`` (the
    file's owner, about to append) it is truncated away; without, it is ignored (another rank
    may be writing it right now). A complete line that is not a record is an error.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    records, good_end = [], 0
    for lineno, line in enumerate(data.splitlines(keepends=True), 1):
        if not line.endswith(b"\n"):
            break
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or "id" not in obj:
                raise ValueError
        except ValueError:
            raise RunError(
                f"{path}:{lineno}: not a prediction record written by `streampro evaluate`; delete this line "
                "(that sample is then evaluated again) or start a new --out directory"
            ) from None
        records.append(obj)
        good_end += len(line)
    if repair and good_end < len(data):
        logger.warning("%s: cutting a torn last line (%d bytes, an interrupted write) before resuming",
                       path, len(data) - good_end)
        with path.open("r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return records


def prediction_files(out_dir: Path) -> list[Path]:
    return [out_dir / PREDICTIONS_FILE] + sorted(out_dir.glob(RANK_PATTERN))


def done_ids(out_dir: Path, own_file: Path | None = None) -> set[str]:
    """Ids of finished samples in every predictions file (``own_file`` is repaired if torn)."""
    ids = set()
    for path in prediction_files(out_dir):
        ids |= {str(r["id"]) for r in read_records(path, repair=path == own_file)}
    return ids


class RecordWriter:
    """Appends one JSON line per sample, flushed and fsynced so that a finished sample survives a crash."""

    def __init__(self, path: Path):
        self.path = path
        self._f = path.open("ab")

    def write(self, record: dict) -> None:
        self._f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def merge_predictions(out_dir: Path, references: list[dict]) -> list[dict]:
    """One record per benchmark sample, in benchmark order, written atomically to ``predictions.jsonl``.

    Rank files are removed afterwards; a crash in between leaves duplicates that the next merge drops.
    """
    by_id: dict[str, dict] = {}
    for path in prediction_files(out_dir):
        for record in read_records(path, repair=False):
            by_id.setdefault(str(record["id"]), record)
    order = [str(r["id"]) for r in references]
    missing = [i for i in order if i not in by_id]
    if missing:
        raise RunError(f"cannot merge: {len(missing)} sample(s) have no record yet, e.g. {missing[:3]}")
    extra = sorted(set(by_id) - set(order))
    if extra:
        logger.warning("ignoring %d record(s) whose ids are not in the benchmark, e.g. %s", len(extra), extra[:3])
    records = [by_id[i] for i in order]
    tmp = out_dir / f".{PREDICTIONS_FILE}.{os.getpid()}.tmp"
    with tmp.open("wb") as f:
        for record in records:
            f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_dir / PREDICTIONS_FILE)
    for path in out_dir.glob(RANK_PATTERN):
        path.unlink()
    return records


# --------------------------------------------------------------------------------------------
# One sample
# --------------------------------------------------------------------------------------------


def shuffle_frames(frames, seed: int) -> list:
    """The same ``(time, image)`` frames with the images in a seeded random order, times kept.

    A control, not an evaluation: a model that really uses the video changes its decisions when
    the frames of a clip are shuffled in time. The order depends only on ``seed`` and the number
    of frames, so every model sees the same shuffled clip.
    """
    import numpy as np

    pairs = list(frames)
    order = np.random.default_rng([seed, len(pairs)]).permutation(len(pairs))
    return [(t, pairs[j][1]) for (t, _), j in zip(pairs, order)]


def is_qa(ref: dict) -> bool:
    """A real-time question (``kind`` given), not a proactive sample (``streampro.metrics.schema.is_qa_record``)."""
    from streampro.metrics.schema import is_qa_record

    return is_qa_record(ref)


def plan_units(references: list[dict]) -> list[list[dict]]:
    """Work units in benchmark order: each proactive sample alone, the real-time questions of one video together."""
    units: list[list[dict]] = []
    by_video: dict[str, int] = {}
    for ref in references:
        video = ref.get("video")
        if is_qa(ref) and isinstance(video, str):
            if video in by_video:
                units[by_video[video]].append(ref)
                continue
            by_video[video] = len(units)
        units.append([ref])
    return units


def check_reference(ref: dict):
    """Validate one reference of either kind and its times; raise ``invalid_reference``."""
    from streampro.metrics import FormatError
    from streampro.metrics.schema import reference_time_problems, validate_qa_reference, validate_reference

    try:
        parsed = validate_qa_reference(ref) if is_qa(ref) else validate_reference(ref)
    except FormatError as e:
        raise SampleError("invalid_reference", str(e)) from None
    problems = reference_time_problems(ref)
    if problems:
        raise SampleError("invalid_reference", "; ".join(problems))
    return parsed


def _video_path(ref: dict, video_root: Path) -> Path:
    video = video_root / ref["video"]
    if not video.is_file():
        raise SampleError("missing_video", f"{video} not found; check --video-root and the reference's 'video'")
    return video


def _frames(video: Path, fps: float, max_pixels: int | None, shuffle_seed: int | None):
    from streampro.video import iter_video_frames

    frames = iter_video_frames(video, fps, max_pixels=max_pixels)
    return frames if shuffle_seed is None else shuffle_frames(frames, shuffle_seed)


def evaluate_sample(protocol, ref: dict, video_root: Path, fps: float, max_pixels: int | None,
                    shuffle_seed: int | None = None) -> dict:
    """Stream one proactive reference through ``protocol``; bad input raises :class:`SampleError`."""
    from streampro.video import VideoReadError

    check_reference(ref)
    video = _video_path(ref, video_root)
    meta = ref.get("meta") if isinstance(ref.get("meta"), dict) else {}
    try:
        frames = _frames(video, fps, max_pixels, shuffle_seed)
        out = protocol.run(frames, ref["question"], float(ref["question_time"]), meta.get("user_turns"))
    except VideoReadError as e:
        raise SampleError("video_error", str(e)) from None
    except ValueError as e:  # the engine's input checks, e.g. a question after the end of the video
        raise SampleError("stream_error", f"{video}: {e}") from None
    return {"id": str(ref["id"]), "predictions": out.predictions, "events": out.events, "error": None}


def evaluate_samples_batched(protocol, refs: list[dict], video_root: Path, fps: float, max_pixels: int | None,
                             shuffle_seed: int | None = None) -> list[dict | SampleError]:
    """:func:`evaluate_sample` for several proactive references at once (``protocol.run_batch``), same records.

    Each video is read whole first, so a bad video or reference fails alone; if the batched engine
    rejects the batch (e.g. a user turn beyond a stream), the samples run one by one.
    """
    from streampro.video import VideoReadError

    results: dict[int, dict | SampleError] = {}
    batch = []
    for i, ref in enumerate(refs):
        try:
            check_reference(ref)
            video = _video_path(ref, video_root)
            frames = list(_frames(video, fps, max_pixels, shuffle_seed))
            meta = ref.get("meta") if isinstance(ref.get("meta"), dict) else {}
            batch.append((i, (frames, ref["question"], float(ref["question_time"]), meta.get("user_turns"))))
        except VideoReadError as e:
            results[i] = SampleError("video_error", str(e))
        except SampleError as e:
            results[i] = e
    try:
        outs = protocol.run_batch([sample for _, sample in batch]) if batch else []
    except ValueError:
        outs = None
    for n, (i, sample) in enumerate(batch):
        ref = refs[i]
        try:
            out = outs[n] if outs is not None else protocol.run(*sample)
        except ValueError as e:
            results[i] = SampleError("stream_error", f"{video_root / ref['video']}: {e}")
            continue
        results[i] = {"id": str(ref["id"]), "predictions": out.predictions, "events": out.events, "error": None}
    return [results[i] for i in range(len(refs))]


def _groups(units: list[list[dict]], batch_streams: int):
    """Consecutive proactive units in groups of up to ``batch_streams``; a real-time QA unit alone."""
    group: list[list[dict]] = []
    for unit in units:
        if is_qa(unit[0]) or batch_streams <= 1:
            if group:
                yield group
                group = []
            yield [unit]
            continue
        group.append(unit)
        if len(group) == batch_streams:
            yield group
            group = []
    if group:
        yield group


def evaluate_questions(protocol, refs: list[dict], video_root: Path, fps: float, max_pixels: int | None,
                       shuffle_seed: int | None = None) -> list[dict | SampleError]:
    """Answer the real-time questions on one video in one pass: a record or a :class:`SampleError` per question."""
    from streampro.evaluation.protocols import beyond_stream_message
    from streampro.evaluation.realtime import question_prompt
    from streampro.video import VideoReadError

    results: dict[int, dict | SampleError] = {}
    valid = []
    for i, ref in enumerate(refs):
        try:
            check_reference(ref)
            valid.append(i)
        except SampleError as e:
            results[i] = e
    if valid:
        try:
            video = _video_path(refs[valid[0]], video_root)
            questions = [(float(refs[i]["question_time"]), question_prompt(refs[i])) for i in valid]
            try:
                out = protocol.answer_at(_frames(video, fps, max_pixels, shuffle_seed), questions)
            except VideoReadError as e:
                raise SampleError("video_error", str(e)) from None
            except ValueError as e:
                raise SampleError("stream_error", f"{video}: {e}") from None
        except SampleError as e:
            results.update({i: e for i in valid})
        else:
            for i, answer in zip(valid, out.answers):
                if answer is None:
                    results[i] = SampleError("stream_error", f"{video}: " + beyond_stream_message(
                        float(refs[i]["question_time"]), out.frames, fps))
                else:
                    results[i] = {"id": str(refs[i]["id"]), "answer": answer["text"], "time": answer["time"],
                                  "p": answer["p"], "error": None}
    return [results[i] for i in range(len(refs))]


def evaluate_unit(protocol, refs: list[dict], video_root: Path, fps: float, max_pixels: int | None,
                  shuffle_seed: int | None = None) -> list[dict | SampleError]:
    """One work unit (:func:`plan_units`): a record or a :class:`SampleError` per reference, in order."""
    if is_qa(refs[0]):
        return evaluate_questions(protocol, refs, video_root, fps, max_pixels, shuffle_seed)
    try:
        return [evaluate_sample(protocol, refs[0], video_root, fps, max_pixels, shuffle_seed)]
    except SampleError as e:
        return [e]


def error_record(ref: dict, error: SampleError) -> dict:
    err = {"kind": error.kind, "message": error.message}
    if is_qa(ref):
        return {"id": str(ref["id"]), "answer": None, "time": None, "p": None, "error": err}
    return {"id": str(ref["id"]), "predictions": [], "events": [], "error": err}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"


def distributed_state() -> Distributed:
    """Rank, world size and device from accelerate (``accelerate launch``), or a single process."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed(0, 1, "cuda" if torch.cuda.is_available() else "cpu")
    from accelerate import PartialState

    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if torch.cuda.is_available() and local > torch.cuda.device_count():
        raise RunError(f"{local} processes on a machine with {torch.cuda.device_count()} GPU(s); "
                       "launch at most one process per GPU")
    # cpu=True lets accelerate run several CPU processes (gloo) when there is no GPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    return Distributed(state.process_index, state.num_processes, str(state.device))


def run_shard(config: EvalConfig, references: list[dict], out_dir: Path, dist: Distributed, *,
              strict: bool = False, progress: bool = True, batch_streams: int = 1, vllm_url: str | None = None) -> int:
    """Evaluate this rank's unfinished samples; return how many it evaluated now.

    ``batch_streams`` > 1 streams that many proactive samples together (``protocol.run_batch``, the
    StreamPro protocol only); the records are those of one-by-one streaming. ``vllm_url``: the
    server of ``config.engine == "vllm"``; a failing server stops the run (finished records are kept).
    """
    from tqdm import tqdm

    from streampro.evaluation.protocols import build_protocol

    own = out_dir / (PREDICTIONS_FILE if dist.world == 1 else f"predictions.rank{dist.rank}.jsonl")
    finished = done_ids(out_dir, own_file=own)
    mine = [unit for i, unit in enumerate(plan_units(references)) if i % dist.world == dist.rank]
    # A unit cut short by a crash: only its missing questions are answered (the answers do not depend on the others).
    units = [todo for unit in mine if (todo := [ref for ref in unit if str(ref["id"]) not in finished])]
    total, todo = sum(map(len, mine)), sum(map(len, units))
    logger.info("rank %d/%d: %d sample(s), %d already done, %d to evaluate",
                dist.rank, dist.world, total, total - todo, todo)
    if not units:
        return 0
    protocol = build_protocol(
        config.protocol, config.model, device=dist.device, fps=config.fps, window_turns=config.window_turns,
        max_new_tokens=config.max_new_tokens, response_threshold=config.response_threshold, vllm_url=vllm_url,
        activation_model=config.activation_model, token_budget=config.token_budget,
    )
    video_root = Path(config.video_root)
    writer = RecordWriter(own)
    bar = tqdm(total=total, initial=total - todo, unit="sample", position=dist.rank,
               desc=f"evaluate[{dist.rank}]" if dist.world > 1 else "evaluate", disable=not progress)
    errors = 0
    try:
        if batch_streams > 1 and config.protocol != "streampro":
            raise RunError(f"batch_streams={batch_streams} needs the streampro protocol, not {config.protocol!r}")
        for group in _groups(units, batch_streams):
            if len(group) > 1:
                unit = [u[0] for u in group]
                results = evaluate_samples_batched(protocol, unit, video_root, config.fps, config.max_pixels,
                                                   config.shuffle_frames)
            else:
                unit = group[0]
                results = evaluate_unit(protocol, unit, video_root, config.fps, config.max_pixels,
                                        config.shuffle_frames)
            for ref, result in zip(unit, results):
                if isinstance(result, SampleError):
                    if strict:
                        raise RunError(f"sample {ref['id']!r}: {result} (--strict stops at the first bad sample)")
                    logger.warning("sample %r: %s", ref["id"], result)
                    result = error_record(ref, result)
                    errors += 1
                writer.write(result)
                bar.update(1)
            bar.set_postfix(errors=errors, refresh=False)
    finally:
        bar.close()
        writer.close()
    return todo


def wait_for_all(out_dir: Path, references: list[dict], poll: float = MERGE_POLL_SECONDS) -> None:
    """Rank 0 waits until every sample has a record (the other ranks append as they go).

    File polling, not a collective barrier: ranks finish hours apart on real benchmarks, longer
    than a process-group timeout. If a rank crashes, the launcher stops the whole group.
    """
    wanted = {str(r["id"]) for r in references}
    last_log = 0.0
    while True:
        missing = wanted - done_ids(out_dir)
        if not missing:
            return
        if time.monotonic() - last_log > 60:
            logger.info("rank 0: waiting for %d sample(s) from the other ranks", len(missing))
            last_log = time.monotonic()
        time.sleep(poll)
