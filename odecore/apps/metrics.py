"""Detection metrics of SDE-Net (Kong et al. 2020) and the out-of-distribution literature it
follows (Hendrycks & Gimpel 2017; Liang et al. 2018), computed with scikit-learn.

Scores are confidences: higher means "in distribution" (or "correctly classified").
``in_scores`` / ``pos`` are the positives. Ties are handled by evaluating the curves only at
distinct thresholds (so AUROC is the Mann-Whitney statistic with ties counting one half).
"""

import numpy as np


def _sklearn_metrics():
    try:
        import sklearn.metrics
    except ImportError as error:  # pragma: no cover - scikit-learn is a dependency of the train extra
        raise ImportError("the detection metrics need scikit-learn: pip install scikit-learn") from error
    return sklearn.metrics


def _labelled(pos, neg) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores): the positives labelled 1, the negatives 0, after the checks that
    give this module's own errors (scikit-learn's would name neither argument)."""
    pos = np.asarray(pos, dtype=np.float64).ravel()
    neg = np.asarray(neg, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("need at least one in- and one out-of-distribution score")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("scores must be finite")
    return np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]), np.concatenate([pos, neg])


def _roc(pos, neg) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at (0, 0) and then at every distinct threshold, from the highest down.
    drop_intermediate=False keeps every threshold: the first one to reach a TPR level may
    otherwise be dropped as collinear."""
    labels, scores = _labelled(pos, neg)
    fpr, tpr, _ = _sklearn_metrics().roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr


def auroc(pos, neg) -> float:
    """Area under the ROC curve."""
    return float(_sklearn_metrics().roc_auc_score(*_labelled(pos, neg)))


def aupr(pos, neg) -> float:
    """Average precision with `pos` as the positive class."""
    return float(_sklearn_metrics().average_precision_score(*_labelled(pos, neg)))


def tnr_at_tpr(pos, neg, tpr_level: float = 0.95) -> float:
    """The fraction of negatives rejected at the highest threshold that keeps at least
    `tpr_level` of the positives."""
    fpr, tpr = _roc(pos, neg)
    # roc_curve's first point, (0, 0), is no threshold: skipped, so that a tpr_level of 0
    # still picks the highest score as the threshold
    k = int(np.argmax(tpr[1:] >= tpr_level))
    return float(1.0 - fpr[1:][k])


def detection_accuracy(pos, neg) -> float:
    """max over thresholds of (TPR + TNR) / 2 (classes weighted equally), the threshold above
    every score included."""
    fpr, tpr = _roc(pos, neg)
    return float(np.max(0.5 * (tpr + 1.0 - fpr)))


def detection_metrics(in_scores, out_scores) -> dict[str, float]:
    """All five: TNR at TPR 95%, AUROC, detection accuracy, AUPR-in, AUPR-out."""
    in_scores = np.asarray(in_scores, dtype=np.float64)
    out_scores = np.asarray(out_scores, dtype=np.float64)
    return {
        "tnr_at_tpr95": tnr_at_tpr(in_scores, out_scores),
        "auroc": auroc(in_scores, out_scores),
        "detection_accuracy": detection_accuracy(in_scores, out_scores),
        "aupr_in": aupr(in_scores, out_scores),
        "aupr_out": aupr(-out_scores, -in_scores),
    }
