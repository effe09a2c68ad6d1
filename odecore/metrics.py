"""`odecore.metrics`, the detection metrics' documented import path: the names of
`odecore.apps.metrics`."""

from .apps.metrics import aupr, auroc, detection_accuracy, detection_metrics, tnr_at_tpr

__all__ = ["aupr", "auroc", "detection_accuracy", "detection_metrics", "tnr_at_tpr"]
