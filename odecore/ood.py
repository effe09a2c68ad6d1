"""`odecore train sdenet`: SDE-Net (Kong et al. 2020) and a ResNet baseline on the bundled
digits, evaluated for out-of-distribution and misclassification detection on data that ships
offline: grey patches of scikit-learn's sample photos, Gaussian-noise images, and held-out
classes (a second pair of models trained on digits 0-4, tested against 5-9)."""
import argparse
import json
import os
import time

import torch
from torch import nn

from . import data as datasets
from .metrics import detection_metrics

METRICS = ("tnr_at_tpr95", "auroc", "detection_accuracy", "aupr_in", "aupr_out")


def build(name, num_classes, args):
    from .nn import ResNet, SDENet

    if name == "sdenet":
        return SDENet(1, num_classes, dim=args.dim, layer_depth=args.layer_depth, sigma_max=args.sigma_max, image_size=8)
    return ResNet(1, num_classes, dim=args.dim)


def fit(name, x, y, num_classes, args):
    torch.manual_seed(args.seed)
    model = build(name, num_classes, args)
    params = model.task_parameters() if name == "sdenet" else list(model.parameters())
    task = torch.optim.Adam(params, lr=args.lr)
    schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(task, T_max=args.epochs)]
    diffusion = None
    if name == "sdenet":
        diffusion = torch.optim.Adam(model.diffusion.parameters(), lr=args.lr_diffusion)
        schedules.append(torch.optim.lr_scheduler.CosineAnnealingLR(diffusion, T_max=args.epochs))
    generator = torch.Generator().manual_seed(args.seed)
    loss_fn = nn.functional.cross_entropy
    for epoch in range(args.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), args.batch_size):
            idx = order[start:start + args.batch_size]
            xb, yb = x[idx], y[idx]
            if diffusion is not None:
                from .nn import sdenet_train_step

                sdenet_train_step(model, task, diffusion, xb, yb, loss_fn)
            else:
                task.zero_grad()
                loss_fn(model(xb), yb).backward()
                task.step()
        for schedule in schedules:
            schedule.step()
    return model


def predict(model, x, passes):
    """Mean class probabilities over `passes` stochastic forward passes."""
    model.eval()
    with torch.no_grad():
        probs = torch.stack([torch.softmax(model(x), dim=1) for _ in range(passes)]).mean(0)
    model.train()
    return probs


def evaluate(model, x_test, y_test, ood_sets, passes, sigma_max=None):
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


def run(args):
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test), (mean, std) = datasets.load_digits(return_normalisation=True)
    if args.limit:
        x_train, y_train, x_test, y_test = x_train[:args.limit], y_train[:args.limit], x_test[:args.limit], y_test[:args.limit]
    n = len(x_test)
    ood = {"photo_patches": (datasets.photo_patches(n, seed=args.seed) - mean) / std,
           "gaussian_noise": torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed))}
    seen, unseen = y_train < 5, y_test >= 5
    results = {}
    for name in ("sdenet", "resnet"):
        print("== %s: all digits" % name)
        model = fit(name, x_train, y_train, 10, args)
        results[name] = evaluate(model, x_test, y_test, ood, args.passes if name == "sdenet" else 1, args.test_sigma_max)
        print("== %s: digits 0-4 (5-9 held out)" % name)
        model = fit(name, x_train[seen], y_train[seen], 5, args)
        held = evaluate(model, x_test[~unseen], y_test[~unseen], {"heldout_classes": x_test[unseen]},
                        args.passes if name == "sdenet" else 1, args.test_sigma_max)
        results[name]["heldout_classes"] = held["heldout_classes"]
        results[name]["heldout_classes_scores"] = held["heldout_classes_scores"]
    os.makedirs(args.out, exist_ok=True)
    table = format_table(results)
    print(table)
    with open(os.path.join(args.out, "ood.md"), "w") as handle:
        handle.write(table + "\n")
    summary = {m: {k: v for k, v in r.items() if not k.endswith("scores")} for m, r in results.items()}
    summary["seconds"] = time.perf_counter() - start
    with open(os.path.join(args.out, "ood.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    plot_histogram(results, args.out)
    return summary


def format_table(results):
    lines = ["| model | accuracy | OOD set | " + " | ".join(METRICS) + " |", "|---|---:|---|" + "---:|" * len(METRICS)]
    for model, r in results.items():
        for key in ("photo_patches", "gaussian_noise", "heldout_classes", "misclassification"):
            if key in r:
                lines.append("| %s | %.2f%% | %s | %s |" % (model, 100 * r["accuracy"], key,
                                                           " | ".join("%.3f" % r[key][m] for m in METRICS)))
    return "\n".join(lines)


def plot_histogram(results, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5))
    for ax, (model, r) in zip(axes, results.items()):
        ax.hist(r["in_scores"], bins=30, alpha=0.6, label="digits (in)", density=True)
        ax.hist(r["photo_patches_scores"], bins=30, alpha=0.6, label="photo patches (out)", density=True)
        ax.set_title("%s: confidence" % model)
        ax.set_xlabel("max mean probability")
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "confidence.png"), dpi=100)
    plt.close(fig)


def main(argv):
    parser = argparse.ArgumentParser(prog="odecore train sdenet", description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--lr-diffusion", type=float, default=1e-3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layer-depth", type=int, default=4)
    parser.add_argument("--sigma-max", type=float, default=1.0)
    parser.add_argument("--test-sigma-max", type=float, default=None, help="sigma_max at test time (default: --sigma-max)")
    parser.add_argument("--passes", type=int, default=10, help="stochastic passes at test time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", default=os.path.join("runs", "sdenet"))
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.passes < 1 or args.layer_depth < 1:
        parser.error("--epochs, --batch-size, --passes and --layer-depth must be positive")
    run(args)
    return 0
