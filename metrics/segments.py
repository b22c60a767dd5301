"""The TG segment parser and temporal IoU; the code is ``metrics/streampro_f1/segments.py``
(part of the self-contained ``evaluate`` module), re-exported here."""

from streampro.metrics.streampro_f1.segments import parse_segment, temporal_iou

__all__ = ["parse_segment", "temporal_iou"]
