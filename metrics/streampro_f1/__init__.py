"""The StreamPro-F1 ``evaluate`` module (``evaluate.load("<path>/metrics/streampro_f1")``)."""
