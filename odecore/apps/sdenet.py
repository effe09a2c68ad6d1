"""`odecore train sdenet`: SDE-Net (Kong et al. 2020) and a ResNet baseline on the bundled
digits, evaluated for out-of-distribution and misclassification detection on data that ships
offline: grey patches of scikit-learn's sample photos, Gaussian-noise images, and held-out
classes (a second pair of models trained on digits 0-4, tested against 5-9).

With ``--data diabetes``: the paper's regression experiment (section 5.2) on scikit-learn's
bundled diabetes data, SDE-Net (mean and variance heads, Gaussian negative log-likelihood)
against the same network without diffusion, out-of-distribution rows from the bundled
breast cancer (or wine) data."""

import argparse
import math
import os
import time

import numpy as np
import torch
from torch import nn

from ..nn import ResNet, SDENet, SDENetRegression, sdenet_train_step
from . import data
from .metrics import detection_metrics
from .outputs import pyplot, save_figure, write_json, write_text

METRICS = ("tnr_at_tpr95", "auroc", "detection_accuracy", "aupr_in", "aupr_out")
DATA = ("digits", "diabetes")
# Per data set defaults of the options left unset on the command line.
DEFAULTS = {
    "digits": {
        "epochs": 10,
        "batch_size": 128,
        "lr": 3e-3,
        "lr_diffusion": 1e-3,
        "dim": 64,
        "layer_depth": 4,
        "sigma_max": 1.0,
        "threads": None,
    },
    # the diabetes models are tiny: a second intra-op thread only adds overhead (several times
    # the run time on a loaded machine)
    "diabetes": {
        "epochs": 100,
        "batch_size": 32,
        "lr": 1e-4,
        "lr_diffusion": 1e-2,
        "dim": 50,
        "layer_depth": 4,
        "sigma_max": 0.5,
        "threads": 1,
    },
}
REGRESSION_MODELS = ("sdenet", "mlp")
# --threads above this is refused: torch accepts any count, and far more threads than this
# abort the process (libgomp: thread creation failed)
MAX_THREADS = 1024


def build(name: str, num_classes: int, args: argparse.Namespace) -> nn.Module:
    """SDE-Net or the ResNet baseline for the 8x8 digits."""
    if name == "sdenet":
        return SDENet(
            1, num_classes, dim=args.dim, layer_depth=args.layer_depth, sigma_max=args.sigma_max, image_size=8
        )
    return ResNet(1, num_classes, dim=args.dim)


def fit(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, args: argparse.Namespace) -> nn.Module:
    """Model `name` trained on (x, y): SDE-Net with its two optimisers, the ResNet with one."""
    torch.manual_seed(args.seed)
    model = build(name, num_classes, args)
    params = model.task_parameters() if name == "sdenet" else list(model.parameters())
    task = torch.optim.Adam(params, lr=args.lr)
    schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(task, T_max=args.epochs)]
    diffusion = None
    if name == "sdenet":
        diffusion = torch.optim.Adam(model.diffusion.parameters(), lr=args.lr_diffusion)
        schedules.append(torch.optim.lr_scheduler.CosineAnnealingLR(diffusion, T_max=args.epochs))
    return train_epochs(model, task, diffusion, schedules, x, y, nn.functional.cross_entropy, args)


def train_epochs(
    model: nn.Module,
    task: torch.optim.Optimizer,
    diffusion: torch.optim.Optimizer | None,
    schedules: list,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn,
    args: argparse.Namespace,
) -> nn.Module:
    """args.epochs of shuffled mini-batches: SDE-Net's alternating step when there is a
    diffusion optimiser, else the task loss alone; the schedules step once per epoch."""
    generator = torch.Generator().manual_seed(args.seed)
    for _epoch in range(args.epochs):
        for xb, yb in data.batches(x, y, args.batch_size, generator):
            if diffusion is not None:
                sdenet_train_step(model, task, diffusion, xb, yb, loss_fn)
            else:
                task.zero_grad()
                loss_fn(model(xb), yb).backward()
                task.step()
        for schedule in schedules:
            schedule.step()
    return model


def predict(model: nn.Module, x: torch.Tensor, passes: int) -> torch.Tensor:
    """Mean class probabilities over `passes` stochastic forward passes."""
    model.eval()
    with torch.no_grad():
        probs = torch.stack([torch.softmax(model(x), dim=1) for _ in range(passes)]).mean(0)
    model.train()
    return probs


def evaluate(
    model: nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    ood_sets: dict,
    passes: int,
    sigma_max: float | None = None,
) -> dict:
    """Test accuracy, and the detection metrics of the test images (in) against each of
    `ood_sets` (out) and of the right against the wrong predictions, the score being the
    highest mean probability; the scores too, for the histograms."""
    if sigma_max is not None and hasattr(model, "sigma_max"):
        model.sigma_max = sigma_max  # the diffusion's scale at test time may differ from training's
    probs = predict(model, x_test, passes)
    confidence, prediction = probs.max(1)
    correct = prediction == y_test
    result = {"accuracy": correct.float().mean().item()}
    for name, x_ood in ood_sets.items():
        ood_conf = predict(model, x_ood, passes).max(1).values
        result[name] = detection_metrics(confidence.numpy(), ood_conf.numpy())
        result[name + "_scores"] = ood_conf.tolist()
    if 0 < int(correct.sum()) < len(correct):
        result["misclassification"] = detection_metrics(confidence[correct].numpy(), confidence[~correct].numpy())
    result["in_scores"] = confidence.tolist()
    return result


def run(args: argparse.Namespace) -> dict:
    """The classification experiment: SDE-Net and the ResNet on all digits (against photo
    patches and noise) and on digits 0-4 (against 5-9); writes ood.md, ood.json and
    confidence.png in args.out and returns the summary."""
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test), (mean, std) = data.load_digits(return_normalisation=True)
    x_train, y_train, x_test, y_test = data.take_first(args.limit, x_train, y_train, x_test, y_test)
    n = len(x_test)
    ood = {
        "photo_patches": (data.photo_patches(n, seed=args.seed) - mean) / std,
        "gaussian_noise": torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed)),
    }
    seen, unseen = y_train < 5, y_test >= 5
    results = {}
    for name in ("sdenet", "resnet"):
        print("== %s: all digits" % name)
        model = fit(name, x_train, y_train, 10, args)
        results[name] = evaluate(
            model, x_test, y_test, ood, args.passes if name == "sdenet" else 1, args.test_sigma_max
        )
        print("== %s: digits 0-4 (5-9 held out)" % name)
        model = fit(name, x_train[seen], y_train[seen], 5, args)
        held = evaluate(
            model,
            x_test[~unseen],
            y_test[~unseen],
            {"heldout_classes": x_test[unseen]},
            args.passes if name == "sdenet" else 1,
            args.test_sigma_max,
        )
        results[name]["heldout_classes"] = held["heldout_classes"]
        results[name]["heldout_classes_scores"] = held["heldout_classes_scores"]
    summary = write_report(args.out, format_table(results), results, start)
    plot_histogram(results, args.out)
    return summary


def write_report(out: str, table: str, results: dict, start: float, **settings) -> dict:
    """Prints `table` and writes it to <out>/ood.md; writes <out>/ood.json: the results
    without the scores, then `settings` and the seconds since `start`. Returns that summary."""
    os.makedirs(out, exist_ok=True)
    print(table)
    write_text(os.path.join(out, "ood.md"), table)
    summary = {m: {k: v for k, v in r.items() if not k.endswith("scores")} for m, r in results.items()}
    summary.update(settings)
    summary["seconds"] = time.perf_counter() - start
    write_json(os.path.join(out, "ood.json"), summary)
    return summary


# -- regression (--data diabetes) ---------------------------------------------------------
def regression_loss(output: tuple, y: torch.Tensor) -> torch.Tensor:
    """The task loss of the regression models: Gaussian negative log-likelihood of the mean
    and variance heads (``output`` as SDENetRegression returns it)."""
    mean, var = output
    return nn.functional.gaussian_nll_loss(mean, y, var)


def fit_regression(name: str, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> nn.Module:
    """SDE-Net trained as in the paper (task loss, then the diffusion net's in/out BCE each
    batch), or the baseline: the same network with ``sigma_max = 0`` (no diffusion, a
    residual MLP with mean and variance heads) trained on the task loss alone."""
    torch.manual_seed(args.seed)
    model = SDENetRegression(
        x.shape[1], hidden=args.dim, layer_depth=args.layer_depth, sigma_max=args.sigma_max if name == "sdenet" else 0.0
    )
    task = torch.optim.Adam(model.task_parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(task, T_max=args.epochs)]
    diffusion = None
    if name == "sdenet":
        diffusion = torch.optim.Adam(
            model.diffusion_net.parameters(), lr=args.lr_diffusion, weight_decay=args.weight_decay
        )
        schedules.append(torch.optim.lr_scheduler.CosineAnnealingLR(diffusion, T_max=args.epochs))
    return train_epochs(model, task, diffusion, schedules, x, y, regression_loss, args)


def predict_regression(model: nn.Module, x: torch.Tensor, passes: int) -> tuple:
    """Over `passes` stochastic forward passes: the mean prediction, the predictive variance
    (of the equally weighted mixture of the passes' Gaussians) and the spread (std) of the
    predicted means."""
    model.eval()
    with torch.no_grad():
        outputs = [model(x) for _ in range(passes)]
    model.train()
    means = torch.stack([m for m, _ in outputs])
    variances = torch.stack([v for _, v in outputs])
    between = means.var(0, unbiased=False)
    return means.mean(0), variances.mean(0) + between, between.sqrt()


def evaluate_regression(
    model: nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    x_ood: torch.Tensor,
    ood_name: str,
    passes: int,
    y_std: float,
    uncertainty: str,
    sigma_max: float | None = None,
) -> dict:
    """Test RMSE and Gaussian NLL (with its 0.5 log(2 pi)) in the target's original units, and
    OOD detection with the test rows as in-distribution, the score being minus the uncertainty:
    ``"spread"``, the std of the predicted means across passes, or ``"variance"``, the
    predicted variance (both in original units)."""
    if sigma_max is not None:
        model.sigma_max = sigma_max  # the diffusion's scale at test time may differ from training's
    mean, var, spread = predict_regression(model, x_test, passes)
    rmse = y_std * (mean - y_test).pow(2).mean().sqrt().item()
    # standardised y: the NLL in original units is the standardised one plus log(y_std)
    nll = (0.5 * torch.log(2 * math.pi * var) + 0.5 * (y_test - mean) ** 2 / var).mean().item() + math.log(y_std)
    _, ood_var, ood_spread = predict_regression(model, x_ood, passes)
    if uncertainty == "spread":
        in_u, out_u = y_std * spread, y_std * ood_spread
    else:
        in_u, out_u = y_std**2 * var, y_std**2 * ood_var
    result = {
        "rmse": rmse,
        "nll": nll,
        "uncertainty": uncertainty,
        "passes": passes,
        "mean_uncertainty_in": in_u.mean().item(),
        "mean_uncertainty_out": out_u.mean().item(),
    }
    result[ood_name] = detection_metrics((-in_u).numpy(), (-out_u).numpy())
    result["in_scores"], result[ood_name + "_scores"] = in_u.tolist(), out_u.tolist()
    return result


def run_regression(args: argparse.Namespace) -> dict:
    """The regression experiment (--data diabetes): SDE-Net and the MLP without diffusion,
    against the rows of args.ood; writes ood.md, ood.json and uncertainty.png in args.out and
    returns the summary."""
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test), (_, _, _, y_std) = data.load_diabetes(return_normalisation=True)
    x_train, y_train, x_test, y_test = data.take_first(args.limit, x_train, y_train, x_test, y_test)
    x_ood = data.regression_ood(args.ood, n_features=x_train.shape[1])
    results = {}
    for name in REGRESSION_MODELS:
        print("== %s: diabetes" % name)
        model = fit_regression(name, x_train, y_train, args)
        if name == "sdenet":
            results[name] = evaluate_regression(
                model, x_test, y_test, x_ood, args.ood, args.passes, y_std, "spread", args.test_sigma_max
            )
        else:  # deterministic: one pass, its own predicted variance as the uncertainty
            results[name] = evaluate_regression(model, x_test, y_test, x_ood, args.ood, 1, y_std, "variance")
    table = format_regression_table(results, args.ood, len(x_test), len(x_ood))
    settings = dict(data="diabetes", ood_data=args.ood, n_test=len(x_test), n_ood=len(x_ood))
    summary = write_report(args.out, table, results, start, **settings)
    plot_uncertainty(results, args.ood, args.out)
    return summary


OOD_DESCRIPTION = {
    "breast_cancer": "scikit-learn's breast cancer data (first 10 features)",
    "wine": "scikit-learn's wine data (first 10 features)",
}


def format_regression_table(results: dict, ood: str, n_test: int, n_ood: int) -> str:
    lines = [
        "| model | test RMSE | test NLL | OOD set | " + " | ".join(METRICS) + " |",
        "|---|---:|---:|---|" + "---:|" * len(METRICS),
    ]
    for model, r in results.items():
        lines.append(
            "| %s | %.2f | %.3f | %s | %s |"
            % (model, r["rmse"], r["nll"], ood, " | ".join("%.3f" % r[ood][m] for m in METRICS))
        )
    lines.append("")
    lines.append(
        "Diabetes (%d test rows) against %s (%d rows, standardised with their own statistics). "
        "RMSE and Gaussian NLL in the target's units. Uncertainty: sdenet, the std of the predicted "
        "means over %d passes; mlp (sigma_max = 0, no diffusion), its predicted variance."
        % (n_test, OOD_DESCRIPTION[ood], n_ood, results["sdenet"]["passes"])
    )
    return "\n".join(lines)


def plot_uncertainty(results: dict, ood: str, out: str) -> str:
    """uncertainty.png: per model, histograms of the log10 uncertainty in and out of distribution."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5))
    for ax, (model, r) in zip(axes, results.items()):
        scores_in = np.log10(np.maximum(r["in_scores"], 1e-12))
        scores_out = np.log10(np.maximum(r[ood + "_scores"], 1e-12))
        bins = np.linspace(min(scores_in.min(), scores_out.min()), max(scores_in.max(), scores_out.max()) + 1e-9, 31)
        ax.hist(scores_in, bins=bins, alpha=0.6, label="diabetes test (in)", density=True)
        ax.hist(scores_out, bins=bins, alpha=0.6, label="%s (out)" % ood.replace("_", " "), density=True)
        ax.set_title("%s: uncertainty" % model)
        ax.set_xlabel("log10 " + ("std of means over passes" if r["uncertainty"] == "spread" else "predicted variance"))
        ax.legend()
    return save_figure(fig, os.path.join(out, "uncertainty.png"))


# -- output ---------------------------------------------------------------------------------
def format_table(results: dict) -> str:
    lines = ["| model | accuracy | OOD set | " + " | ".join(METRICS) + " |", "|---|---:|---|" + "---:|" * len(METRICS)]
    for model, r in results.items():
        for key in ("photo_patches", "gaussian_noise", "heldout_classes", "misclassification"):
            if key in r:
                lines.append(
                    "| %s | %.2f%% | %s | %s |"
                    % (model, 100 * r["accuracy"], key, " | ".join("%.3f" % r[key][m] for m in METRICS))
                )
    return "\n".join(lines)


def plot_histogram(results: dict, out: str) -> str:
    """confidence.png: per model, histograms of the confidence on digits and on photo patches."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5))
    for ax, (model, r) in zip(axes, results.items()):
        ax.hist(r["in_scores"], bins=30, alpha=0.6, label="digits (in)", density=True)
        ax.hist(r["photo_patches_scores"], bins=30, alpha=0.6, label="photo patches (out)", density=True)
        ax.set_title("%s: confidence" % model)
        ax.set_xlabel("max mean probability")
        ax.legend()
    return save_figure(fig, os.path.join(out, "confidence.png"))


def default_help(key: str) -> str:
    """The per data set defaults of option `key`, for its help."""
    return "(digits %s, diabetes %s)" % (DEFAULTS["digits"][key], DEFAULTS["diabetes"][key])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odecore train sdenet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        choices=DATA,
        default="digits",
        help="digits: classification (default); diabetes: regression (the paper's section 5.2)",
    )
    parser.add_argument(
        "--ood",
        choices=("breast_cancer", "wine"),
        default="breast_cancer",
        help="--data diabetes: the bundled data set whose rows are out of distribution",
    )
    parser.add_argument("--epochs", type=int, default=None, help=default_help("epochs"))
    parser.add_argument("--batch-size", type=int, default=None, help=default_help("batch_size"))
    parser.add_argument("--lr", type=float, default=None, help=default_help("lr"))
    parser.add_argument("--lr-diffusion", type=float, default=None, help=default_help("lr_diffusion"))
    parser.add_argument(
        "--weight-decay", type=float, default=0.0, help="--data diabetes: Adam's weight decay (default 0)"
    )
    parser.add_argument("--dim", type=int, default=None, help="channels / hidden units " + default_help("dim"))
    parser.add_argument("--layer-depth", type=int, default=None, help=default_help("layer_depth"))
    parser.add_argument("--sigma-max", type=float, default=None, help=default_help("sigma_max"))
    parser.add_argument(
        "--test-sigma-max", type=float, default=None, help="sigma_max at test time (default: --sigma-max)"
    )
    parser.add_argument("--passes", type=int, default=10, help="stochastic passes at test time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for the run (digits: torch's default, diabetes: 1)",
    )
    parser.add_argument("--out", default=os.path.join("runs", "sdenet"))
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """parser.error on a value the run could not use."""
    if args.epochs < 1 or args.batch_size < 1 or args.passes < 1 or args.layer_depth < 1:
        parser.error("--epochs, --batch-size, --passes and --layer-depth must be positive")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        parser.error("--threads must be positive and at most %d" % MAX_THREADS)
    if args.dim < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--dim and --limit must be positive")
    if not all(0 < v < math.inf for v in (args.lr, args.lr_diffusion)):
        parser.error("--lr and --lr-diffusion must be positive and finite")
    for name, value in (
        ("--sigma-max", args.sigma_max),
        ("--test-sigma-max", args.test_sigma_max),
        ("--weight-decay", args.weight_decay),
    ):
        if value is not None and not 0 <= value < math.inf:
            parser.error("%s must be non-negative and finite, got %r" % (name, value))
    if args.data == "diabetes" and args.passes < 2:
        parser.error("--data diabetes needs --passes >= 2 (SDE-Net's uncertainty is the spread across passes)")


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.data].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    check_arguments(parser, args)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        run_regression(args) if args.data == "diabetes" else run(args)
    finally:
        torch.set_num_threads(threads)
    return 0
