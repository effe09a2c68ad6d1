"""`odecore train sdenet --data diabetes`: SDE-Net's regression experiment (Kong et al. 2020,
section 5.2) on scikit-learn's bundled diabetes data, out-of-distribution rows from its
breast cancer (or wine) data. The loaders, the command's files, its argument errors, and that
the trained SDE-Net is more uncertain out of distribution than in it."""

import json
import math
import os
import types

import numpy as np
import pytest
import torch

from odecore.__main__ import main
from odecore.apps import data, sdenet
from odecore.nn import SDENetRegression

METRICS = {"tnr_at_tpr95", "auroc", "detection_accuracy", "aupr_in", "aupr_out"}


def test_diabetes_loader_split_and_standardisation():
    from sklearn.datasets import load_diabetes

    (x_train, y_train), (x_test, y_test), (x_mean, x_std, y_mean, y_std) = data.load_diabetes(return_normalisation=True)
    assert x_train.shape == (354, 10) and y_train.shape == (354,)
    assert x_test.shape == (88, 10) and y_test.shape == (88,)
    assert x_train.dtype == y_train.dtype == torch.float32
    # standardised with the training rows' statistics: zero mean, unit (population) std there
    torch.testing.assert_close(x_train.mean(0), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(x_train.std(0, unbiased=False), torch.ones(10), atol=1e-5, rtol=0)
    assert abs(y_train.mean().item()) < 1e-5 and abs(y_train.std(unbiased=False).item() - 1) < 1e-5
    assert abs(x_test.mean().item()) > 1e-4  # the test rows are not re-standardised with their own
    # undoing the standardisation gives back scikit-learn's rows, each exactly once
    raw = load_diabetes(scaled=False)
    x_all = torch.cat([x_train, x_test]) * x_std + x_mean
    y_all = torch.cat([y_train, y_test]).double() * y_std + y_mean
    assert 25 <= y_all.min() and y_all.max() <= 346 and 70 < y_std < 85
    rows = np.concatenate([x_all.double().numpy(), y_all.numpy()[:, None]], axis=1)
    raw_rows = np.concatenate([raw.data, raw.target[:, None]], axis=1)
    distance = np.abs(rows[:, None, :] - raw_rows[None, :, :]).max(-1)
    nearest = distance.argmin(1)
    assert distance.min(1).max() < 1e-2 and len(set(nearest.tolist())) == 442
    # deterministic: the same seed gives the same split, another seed another one
    (x2, y2), (x3, y3) = data.load_diabetes()
    assert torch.equal(x2, x_train) and torch.equal(y3, y_test)
    (_, _), (x4, _) = data.load_diabetes(seed=1)
    assert x4.shape == (88, 10) and not torch.allclose(x4, x_test)
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_diabetes(test_fraction=1.0)


@pytest.mark.parametrize("name,rows", [("breast_cancer", 569), ("wine", 178)])
def test_regression_ood_rows(name, rows):
    x = data.regression_ood(name)
    assert x.shape == (rows, 10) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
    # standardised with their own statistics
    torch.testing.assert_close(x.mean(0), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(10), atol=1e-5, rtol=0)


def test_regression_ood_rejects_unknown_sets():
    with pytest.raises(ValueError, match="breast_cancer or wine"):
        data.regression_ood("iris")
    with pytest.raises(ValueError, match="only 13 features"):
        data.regression_ood("wine", n_features=20)


def test_train_sdenet_diabetes_writes_the_table(tmp_path, capsys):
    out = str(tmp_path / "sdenet")
    assert main(["train", "sdenet", "--data", "diabetes", "--epochs", "2", "--passes", "3", "--out", out]) == 0
    summary = json.load(open(os.path.join(out, "ood.json")))
    assert summary["data"] == "diabetes" and summary["ood_data"] == "breast_cancer"
    assert summary["n_test"] == 88 and summary["n_ood"] == 569 and summary["seconds"] > 0
    for model, uncertainty in (("sdenet", "spread"), ("mlp", "variance")):
        r = summary[model]
        assert set(r["breast_cancer"]) == METRICS
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in r["breast_cancer"].values())
        assert math.isfinite(r["nll"]) and 0 < r["rmse"] < 200  # original units (target std about 77)
        assert r["uncertainty"] == uncertainty
        assert r["mean_uncertainty_in"] > 0 and r["mean_uncertainty_out"] > 0
    assert summary["sdenet"]["passes"] == 3 and summary["mlp"]["passes"] == 1
    table = open(os.path.join(out, "ood.md")).read()
    assert "| sdenet |" in table and "| mlp |" in table and "breast cancer" in table
    assert "| sdenet |" in capsys.readouterr().out
    assert os.path.getsize(os.path.join(out, "uncertainty.png")) > 1000
    assert not os.path.exists(os.path.join(out, "confidence.png"))


def test_train_sdenet_diabetes_against_wine(tmp_path):
    out = str(tmp_path / "wine")
    main(
        [
            "train",
            "sdenet",
            "--data",
            "diabetes",
            "--ood",
            "wine",
            "--epochs",
            "1",
            "--passes",
            "2",
            "--limit",
            "50",
            "--out",
            out,
        ]
    )
    summary = json.load(open(os.path.join(out, "ood.json")))
    assert summary["ood_data"] == "wine" and summary["n_test"] == 50 and summary["n_ood"] == 178
    assert set(summary["sdenet"]["wine"]) == set(summary["mlp"]["wine"]) == METRICS


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--data", "mnist"], "argument --data: invalid choice: 'mnist'"),
        (["--data", "diabetes", "--ood", "iris"], "argument --ood: invalid choice: 'iris'"),
        (["--data", "diabetes", "--passes", "1"], "--passes >= 2"),
        (["--data", "diabetes", "--epochs", "0"], "must be positive"),
        (["--threads", "0"], "--threads must be positive"),
    ],
)
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        main(["train", "sdenet"] + argv)
    assert error.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults_depend_on_the_data(monkeypatch):
    seen = {}

    def record(name):
        return lambda args: seen.setdefault(name, (args, torch.get_num_threads()))

    monkeypatch.setattr(sdenet, "run", record("digits"))
    monkeypatch.setattr(sdenet, "run_regression", record("diabetes"))
    threads = torch.get_num_threads()
    sdenet.main([])
    sdenet.main(["--data", "diabetes", "--epochs", "7"])
    assert torch.get_num_threads() == threads  # restored after the run
    assert seen["digits"][1] == threads and seen["diabetes"][1] == 1
    for name in ("digits", "diabetes"):
        expected = dict(sdenet.DEFAULTS[name], epochs=7) if name == "diabetes" else sdenet.DEFAULTS[name]
        assert {key: getattr(seen[name][0], key) for key in expected} == expected
    # the digits path keeps its former defaults
    assert sdenet.DEFAULTS["digits"] == {
        "epochs": 10,
        "batch_size": 128,
        "lr": 3e-3,
        "lr_diffusion": 1e-3,
        "dim": 64,
        "layer_depth": 4,
        "sigma_max": 1.0,
        "threads": None,
    }


def test_predictions_and_gaussian_nll():
    torch.manual_seed(0)
    x, y = torch.randn(40, 10), torch.randn(40)
    quiet = SDENetRegression(10, hidden=8, sigma_max=0.0)
    mean, var, spread = sdenet.predict_regression(quiet, x, passes=3)
    assert mean.shape == var.shape == spread.shape == (40,)
    assert torch.equal(spread, torch.zeros(40))  # no diffusion: every pass alike
    m, v = quiet(x)
    torch.testing.assert_close(mean, m.detach())
    torch.testing.assert_close(var, v.detach())
    # the reported NLL is the exact Gaussian NLL in original units
    r = sdenet.evaluate_regression(quiet, x, y, torch.randn(5, 10), "other", 2, 10.0, "variance")
    sd = (10.0**2 * v.detach()).sqrt()
    expected = -torch.distributions.Normal(10.0 * m.detach(), sd).log_prob(10.0 * y).mean().item()
    assert abs(r["nll"] - expected) < 1e-4
    assert abs(r["rmse"] - 10.0 * (m.detach() - y).pow(2).mean().sqrt().item()) < 1e-4
    noisy = SDENetRegression(10, hidden=8, sigma_max=5.0)
    mean, var, spread = sdenet.predict_regression(noisy, x, passes=4)
    assert bool((spread > 0).all()) and bool((var >= spread**2).all())


def args_for_test(**kw):
    args = dict(sdenet.DEFAULTS["diabetes"], epochs=20, lr=1e-3, weight_decay=0.0, seed=0)
    args.update(kw)
    return types.SimpleNamespace(**args)


def evaluate_sdenet(args, passes=20):
    (x_train, y_train), (x_test, y_test), (_, _, _, y_std) = data.load_diabetes(return_normalisation=True)
    x_ood = data.regression_ood("breast_cancer")
    model = sdenet.fit_regression("sdenet", x_train, y_train, args)
    torch.manual_seed(1)
    return sdenet.evaluate_regression(model, x_test, y_test, x_ood, "breast_cancer", passes, y_std, "spread")


@pytest.fixture
def one_thread():
    """As the command runs these tiny models (a second thread only adds overhead)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_trained_sdenet_is_more_uncertain_out_of_distribution(one_thread):
    """The alternating diffusion training makes the spread of the passes larger on the
    breast cancer rows than on the diabetes test rows (seeded; about 2 s). Without that
    training (lr_diffusion = 0) the same setting gives an AUROC near 0.5."""
    r = evaluate_sdenet(args_for_test())
    assert r["breast_cancer"]["auroc"] > 0.65, r["breast_cancer"]
    assert r["mean_uncertainty_out"] > 1.5 * r["mean_uncertainty_in"], r
    assert r["rmse"] < 65, r["rmse"]  # and it still fits the data (a linear fit: about 58)
    # the test can fail: without the diffusion's training the separation goes
    untrained = evaluate_sdenet(args_for_test(lr_diffusion=0.0))
    assert untrained["breast_cancer"]["auroc"] < r["breast_cancer"]["auroc"] - 0.1, untrained["breast_cancer"]
