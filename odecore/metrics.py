"""Detection metrics of SDE-Net (Kong et al. 2020) and the out-of-distribution literature it
follows (Hendrycks & Gimpel 2017; Liang et al. 2018), computed exactly by sorting.

Scores are confidences: higher means "in distribution" (or "correctly classified").
``in_scores`` are the positives. Ties are handled by evaluating the curves only at distinct
thresholds, so AUROC equals the Mann-Whitney statistic with ties counting one half (and
scikit-learn's roc_auc_score), and AUPR equals scikit-learn's average_precision_score.
"""

import numpy as np


def _curve(pos, neg):
    """True- and false-positive counts at each distinct threshold, from the highest down."""
    pos = np.asarray(pos, dtype=np.float64).ravel()
    neg = np.asarray(neg, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("need at least one in- and one out-of-distribution score")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("scores must be finite")
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last index of each distinct score
    tp = np.cumsum(labels)[last]
    fp = (last + 1) - tp
    return tp, fp, len(pos), len(neg)


def auroc(pos, neg):
    tp, fp, p, n = _curve(pos, neg)
    tpr, fpr = np.r_[0.0, tp / p], np.r_[0.0, fp / n]
    return float(np.trapezoid(tpr, fpr) if hasattr(np, "trapezoid") else np.trapz(tpr, fpr))


def aupr(pos, neg):
    """Average precision with `pos` as the positive class."""
    tp, fp, p, _ = _curve(pos, neg)
    precision = tp / (tp + fp)
    recall = np.r_[0.0, tp / p]
    return float(np.sum(np.diff(recall) * precision))


def tnr_at_tpr(pos, neg, tpr_level=0.95):
    """The fraction of negatives rejected at the highest threshold that keeps at least
    `tpr_level` of the positives."""
    tp, fp, p, n = _curve(pos, neg)
    k = int(np.argmax(tp / p >= tpr_level))
    return float(1.0 - fp[k] / n)


def detection_accuracy(pos, neg):
    """max over thresholds of (TPR + TNR) / 2 (classes weighted equally)."""
    tp, fp, p, n = _curve(pos, neg)
    tpr, fpr = np.r_[0.0, tp / p], np.r_[0.0, fp / n]
    return float(np.max(0.5 * (tpr + 1.0 - fpr)))


def detection_metrics(in_scores, out_scores):
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
