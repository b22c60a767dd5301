"""The StreamPro-F1 ``evaluate`` module: ``evaluate.load("streampro_f1")`` from the folder that holds
this one. Its files import only the standard library and each other, so the folder uploads as a Hub
Space as it is; the package imports its maths from here (:mod:`streampro.metrics`)."""
