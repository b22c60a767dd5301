"""StreamPro datasets: raw schema, converters, SFT / RL / benchmark builders, StreamPro-Synth, lazy frames.

See ``docs/data.md``. The main entry points::

    from streampro.dataset_scripts import build_sft_record, load_record_frames, to_reference
"""

from streampro.dataset_scripts.builders import build_rl_sample, build_sft_record
from streampro.dataset_scripts.frames import StreamingVideoDataset, load_record_frames
from streampro.dataset_scripts.schema import (
    RawFormatError,
    format_segment,
    read_raw,
    to_reference,
    validate_raw,
)

__all__ = [
    "RawFormatError",
    "StreamingVideoDataset",
    "build_rl_sample",
    "build_sft_record",
    "format_segment",
    "load_record_frames",
    "read_raw",
    "to_reference",
    "validate_raw",
]
