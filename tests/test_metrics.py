"""Detection metrics, exact by sorting, against scikit-learn and hand-computed cases."""

import numpy as np
import pytest

from odecore.metrics import aupr, auroc, detection_accuracy, detection_metrics, tnr_at_tpr

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_auroc_and_aupr_match_scikit_learn(seed, ties):
    rng = np.random.RandomState(seed)
    pos, neg = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)
    if ties:
        pos, neg = np.round(pos, 1), np.round(neg, 1)
    scores, labels = np.r_[pos, neg], np.r_[np.ones(300), np.zeros(200)]
    assert auroc(pos, neg) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert aupr(pos, neg) == pytest.approx(sklearn_metrics.average_precision_score(labels, scores), abs=1e-12)
    assert aupr(-neg, -pos) == pytest.approx(sklearn_metrics.average_precision_score(1 - labels, -scores), abs=1e-12)


def test_hand_computed_cases():
    pos, neg = [0.9, 0.8, 0.7, 0.1], [0.6, 0.5, 0.05, 0.95]
    assert auroc(pos, neg) == pytest.approx(10 / 16)  # 10 of 16 (pos, neg) pairs ordered right
    m = detection_metrics([1.0, 2.0, 3.0], [-1.0, -2.0])
    assert m == {"tnr_at_tpr95": 1.0, "auroc": 1.0, "detection_accuracy": 1.0, "aupr_in": 1.0, "aupr_out": 1.0}
    # TPR 95% of 20 positives keeps 19 of them: the threshold is the 19th highest positive,
    # 1.0; of the negatives only 0.5 falls below it, so TNR = 1/4
    pos = np.arange(20.0)
    neg = np.array([0.5, 1.5, 2.5, 30.0])
    assert tnr_at_tpr(pos, neg) == pytest.approx(0.25)
    assert detection_accuracy([1, 1], [0, 0]) == 1.0


def test_errors():
    with pytest.raises(ValueError, match="at least one"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        auroc([np.nan], [1.0])
