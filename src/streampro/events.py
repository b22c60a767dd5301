"""Console and JSONL output of a stream's events (``streampro stream``, ``streampro demo``).

Responses are printed with their times as they happen, silent stretches summarised on one line;
optionally every event (one per frame, ``StreamEvent.to_dict()``) is written as a JSONL line and
flushed at once, so an interrupted stream keeps what it produced.
"""

from __future__ import annotations

import json
import sys


def print_events(events, out_path: str | None = None, stream=None) -> list[dict]:
    """Print responses as they happen (silent stretches summarised); optionally write every event as JSONL."""
    stream = stream or sys.stdout
    out = open(out_path, "w", encoding="utf-8") if out_path else None
    records, silent_from = [], None
    try:
        for ev in events:
            rec = ev.to_dict()
            records.append(rec)
            if out:
                out.write(json.dumps(rec) + "\n")
                out.flush()
            quiet = ev.decision in ("silence", "standby")  # standby: a three-state model's quiet turn
            if silent_from is not None and (ev.question or not quiet):
                print(f"           (silent {silent_from:g}-{ev.time - 1:g}s)", file=stream)
                silent_from = None
            if ev.question:
                print(f"[{ev.time:7.1f}s] question: {ev.question}", file=stream, flush=True)
            if quiet:
                silent_from = ev.time if silent_from is None else silent_from
                continue
            p = "" if ev.p_response is None else f"  (p={ev.p_response:.2f})"
            print(f"[{ev.time:7.1f}s] {ev.text}{p}", file=stream, flush=True)
        if silent_from is not None:
            print(f"           (silent {silent_from:g}-{records[-1]['time']:g}s)", file=stream)
    finally:
        if out:
            out.close()
    n = sum(r["decision"] == "response" for r in records)
    print(f"{len(records)} frames, {n} responses", file=stream)
    return records
