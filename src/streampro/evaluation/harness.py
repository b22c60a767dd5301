"""The evaluation loop: stream every benchmark sample, append predictions, resume, shard, merge.

Files in the run directory (``RUN_DIR``):

- ``run_config.json`` — the arguments that shape the results (and a hash of the benchmark file).
  A run directory holds one evaluation: starting again with different arguments is refused.
- ``predictions.jsonl`` — one line per finished sample, ``{"id", "predictions": [{time, text}],
  "events": [{t, d, p}], "error": null | {"kind", "message"}}``, each line flushed and fsynced as
  soon as the sample finishes. With several processes each rank appends to
  ``predictions.rank{r}.jsonl``; rank 0 merges them in benchmark order when all are done.
- ``report.json``, ``report.md``, ``plots/`` — written by :mod:`streampro.evaluation.report`.

Resume: a restarted run reads every predictions file in ``RUN_DIR``, skips the samples already
there, and cuts a torn last line (a write interrupted by ``kill -9``) before appending. Samples
are never duplicated: the merge keeps one record per id. Sharding: with ``world`` processes,
rank r takes benchmark samples i with ``i % world == r``; the result does not depend on
``world`` (the merge restores benchmark order).

Bad inputs (a reference that fails validation, e.g. an unknown task; a missing video; a video
that cannot be decoded; a question after the end of the video) are recorded on the sample's
line as ``error`` and the run goes on — unless ``strict``, which stops at the first one. Errored
samples are left out of every average and counted in the report (never scored as zeros).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
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


def check_run_config(out_dir: Path, config: EvalConfig) -> None:
    """Write ``run_config.json``, or check that the existing one matches ``config``."""
    path = out_dir / CONFIG_FILE
    wanted = config.to_dict()
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
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
    tmp = out_dir / f".{PREDICTIONS_FILE}.tmp"
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


def evaluate_sample(protocol, ref: dict, video_root: Path, fps: float, max_pixels: int | None,
                    shuffle_seed: int | None = None) -> dict:
    """Stream one reference through ``protocol``; bad input raises :class:`SampleError`."""
    from streampro.metrics import FormatError, validate_reference
    from streampro.video import VideoReadError, iter_video_frames

    try:
        validate_reference(ref)
    except FormatError as e:
        raise SampleError("invalid_reference", str(e)) from None
    video = video_root / ref["video"]
    if not video.is_file():
        raise SampleError("missing_video", f"{video} not found; check --video-root and the reference's 'video'")
    try:
        frames = iter_video_frames(video, fps, max_pixels=max_pixels)
        if shuffle_seed is not None:
            frames = shuffle_frames(frames, shuffle_seed)
        out = protocol.run(frames, ref["question"], float(ref["question_time"]))
    except VideoReadError as e:
        raise SampleError("video_error", str(e)) from None
    except ValueError as e:  # the engine's input checks, e.g. a question after the end of the video
        raise SampleError("stream_error", f"{video}: {e}") from None
    return {"id": str(ref["id"]), "predictions": out.predictions, "events": out.events, "error": None}


def error_record(ref: dict, error: SampleError) -> dict:
    return {"id": str(ref["id"]), "predictions": [], "events": [],
            "error": {"kind": error.kind, "message": error.message}}


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
              strict: bool = False, progress: bool = True) -> int:
    """Evaluate this rank's unfinished samples; return how many it evaluated now."""
    from tqdm import tqdm

    from streampro.evaluation.protocols import build_protocol

    own = out_dir / (PREDICTIONS_FILE if dist.world == 1 else f"predictions.rank{dist.rank}.jsonl")
    finished = done_ids(out_dir, own_file=own)
    mine = [ref for i, ref in enumerate(references) if i % dist.world == dist.rank]
    todo = [ref for ref in mine if str(ref["id"]) not in finished]
    logger.info("rank %d/%d: %d sample(s), %d already done, %d to evaluate",
                dist.rank, dist.world, len(mine), len(mine) - len(todo), len(todo))
    if not todo:
        return 0
    protocol = build_protocol(
        config.protocol, config.model, device=dist.device, fps=config.fps, window_turns=config.window_turns,
        max_new_tokens=config.max_new_tokens, response_threshold=config.response_threshold,
    )
    video_root = Path(config.video_root)
    writer = RecordWriter(own)
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="sample", position=dist.rank,
               desc=f"evaluate[{dist.rank}]" if dist.world > 1 else "evaluate", disable=not progress)
    errors = 0
    try:
        for ref in todo:
            try:
                record = evaluate_sample(protocol, ref, video_root, config.fps, config.max_pixels,
                                         config.shuffle_frames)
            except SampleError as e:
                if strict:
                    raise RunError(f"sample {ref['id']!r}: {e} (--strict stops at the first bad sample)") from None
                logger.warning("sample %r: %s", ref["id"], e)
                record = error_record(ref, e)
                errors += 1
            writer.write(record)
            bar.update(1)
            bar.set_postfix(errors=errors, refresh=False)
    finally:
        bar.close()
        writer.close()
    return len(todo)


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
