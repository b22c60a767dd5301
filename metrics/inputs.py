"""What a scoring run reads: the predictions and references files, and the judge its options name.

:func:`load_inputs` reads both JSONL files (formats in :mod:`streampro.metrics.schema`), checks
every line and pairs them by id; every problem is reported with its file and line before
anything is scored (:class:`InputError`). :func:`judge_from_args` makes the judge that the
``--judge*`` options of ``streampro score`` / ``streampro evaluate`` describe.
"""

from __future__ import annotations

import json
from pathlib import Path

from streampro.errors import UserError

MAX_ERRORS_SHOWN = 30


class InputError(ValueError):
    """Problems in the input files, each ``file:line: what and how to fix`` (``problems``)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            shown = self.problems[:MAX_ERRORS_SHOWN]
            more = f"\n... and {len(self.problems) - len(shown)} more" if len(self.problems) > len(shown) else ""
            message = f"{len(self.problems)} problem(s) in the input files:\n" + "\n".join(shown) + more
        super().__init__(message)

    def to_user_error(self) -> UserError:
        """One error line for the first problem; with several, a count and the list below it."""
        fix = "fix the file and run again (formats: `streampro score --help`)"
        if len(self.problems) == 1:
            return UserError.from_exception(self, fix)
        shown = self.problems[:MAX_ERRORS_SHOWN]
        if len(self.problems) > len(shown):
            shown.append(f"... and {len(self.problems) - len(shown)} more")
        return UserError(f"{len(self.problems)} problems in the input files (listed below)",
                         "fix each line and run again", details=shown)


def read_records(path: Path, parse, errors: list[str]) -> dict[str, tuple[int, object]]:
    """id -> (line number, parsed record); problems are appended to ``errors``."""
    from streampro.metrics.schema import FormatError

    from streampro.jsonl import iter_jsonl

    records: dict[str, tuple[int, object]] = {}
    for lineno, obj in iter_jsonl(path, errors=errors):  # a missing file: UserError
        try:
            sample_id, record = parse(obj)
        except FormatError as e:
            errors.append(f"{path}:{lineno}: {e}")
            continue
        if sample_id in records:
            errors.append(f"{path}:{lineno}: duplicate id {sample_id!r} (first on line {records[sample_id][0]})")
            continue
        records[sample_id] = (lineno, record)
    return records


def load_inputs(predictions_path: Path, references_path: Path) -> tuple[list[list[dict]], list[dict]]:
    """Read and validate both files; pair them by id in the references' order.

    Raises :class:`InputError` listing every problem found (file:line: what and how to fix), and
    :class:`~streampro.errors.UserError` for a missing file.
    """
    from streampro.metrics.schema import validate_prediction_record, validate_reference

    def parse_reference(obj):
        validate_reference(obj)
        return str(obj["id"]), obj

    def parse_prediction(obj):
        sample_id, _ = validate_prediction_record(obj)
        return sample_id, obj["predictions"]

    predictions_path, references_path = Path(predictions_path), Path(references_path)
    errors: list[str] = []
    refs = read_records(references_path, parse_reference, errors)
    preds = read_records(predictions_path, parse_prediction, errors)
    for sample_id, (lineno, _) in refs.items():
        if sample_id not in preds:
            errors.append(
                f"{references_path}:{lineno}: id {sample_id!r} has no record in {predictions_path}; "
                f'add {{"id": {json.dumps(sample_id)}, "predictions": []}} if the model stayed silent'
            )
    for sample_id, (lineno, _) in preds.items():
        if sample_id not in refs:
            errors.append(
                f"{predictions_path}:{lineno}: id {sample_id!r} is not in {references_path}; remove it"
            )
    if errors:
        raise InputError(errors)
    if not refs:
        raise InputError([f"{references_path}: no samples; pass a references JSONL with one sample per line"])
    ids = list(refs)
    return [preds[i][1] for i in ids], [refs[i][1] for i in ids]


def judge_from_args(args):
    """The judge that ``--judge``, ``--lexical-method`` and the ``--judge-*`` options describe."""
    from streampro.metrics.judges import make_judge

    if args.judge == "lexical":
        return make_judge("lexical", method=args.lexical_method)
    if args.judge == "llm":
        if not args.judge_base_url or not args.judge_model:
            raise UserError("--judge llm needs --judge-base-url and --judge-model",
                            "pass e.g. --judge-base-url http://localhost:8000/v1 --judge-model NAME")
        return make_judge(
            "llm",
            base_url=args.judge_base_url,
            model=args.judge_model,
            api_key_env=args.judge_api_key_env,
            cache_path=args.judge_cache,
            max_concurrency=args.judge_concurrency,
            timeout=args.judge_timeout,
            max_retries=args.judge_retries,
        )
    return make_judge(args.judge)


def add_judge_arguments(parser) -> None:
    """The judge flags of ``streampro score`` and ``streampro evaluate`` (one declaration for both;
    :func:`judge_from_args` reads them)."""
    from streampro.metrics.judges import JUDGES  # stdlib only: cheap at `streampro --help`

    group = parser.add_argument_group("judge")
    group.add_argument("--judge", default="lexical", choices=JUDGES,
                       help="Answer-accuracy judge (default: lexical, an offline approximation; "
                            "OVO-Bench: exact or contains).")
    group.add_argument("--lexical-method", default="token_f1", choices=("token_f1", "rougeL"))
    group.add_argument("--judge-base-url", help="llm judge: OpenAI-compatible API root, e.g. http://localhost:8000/v1")
    group.add_argument("--judge-model", help="llm judge: model name sent to the endpoint")
    group.add_argument("--judge-api-key-env", default="OPENAI_API_KEY",
                       help="llm judge: environment variable holding the API key (default OPENAI_API_KEY)")
    group.add_argument("--judge-cache", type=Path,
                       help="llm judge: SQLite cache file (default $STREAMPRO_JUDGE_CACHE or ~/.cache/streampro)")
    group.add_argument("--judge-concurrency", type=int, default=16, help="llm judge: requests in flight")
    group.add_argument("--judge-timeout", type=float, default=60.0,
                       help="llm judge: seconds one request may take in all (default 60)")
    group.add_argument("--judge-retries", type=int, default=5, help="llm judge: retries per request")

