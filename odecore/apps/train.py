"""`odecore train`: ODE-Net, RK-Net and ResNet classifiers (Chen et al. 2018, section 3) on data
that ships offline, on one process or under torchrun, with resumable checkpoints, metrics as
JSON and plots as PNG."""

import argparse
import json
import math
import os
import time

import torch
from torch import nn
from tqdm import tqdm

from ..nn import ODENet, ResNet
from ..solvers import SOLVERS
from . import checkpoints, data
from .outputs import plot_line, pyplot, save_figure, write_json

MODELS = ("odenet", "rknet", "resnet")


# -- models -------------------------------------------------------------------------------
def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    method: str = "dopri5",
    tol: float = 1e-3,
    gradient: str | None = None,
    compile: bool = False,
) -> nn.Module:
    """The classifier `name` of odecore.nn with the paper's layout (its default 'res'
    downsampling takes MNIST's 28x28 to 7x7 and digits' 8x8 to 2x2)."""
    kwargs = dict(in_channels=in_channels, num_classes=num_classes)
    if name == "resnet":
        return ResNet(**kwargs)
    if name in ("odenet", "rknet"):
        mode = gradient or ("direct" if name == "rknet" else "adjoint")
        options = {"compile": True} if compile else None
        return ODENet(method=method, rtol=tol, atol=tol, gradient=mode, options=options, **kwargs)
    raise ValueError("unknown model %r (choose %s)" % (name, ", ".join(MODELS)))


def ode_block(model: nn.Module) -> nn.Module | None:
    """The model's ODEBlock (it counts the NFE), None for a ResNet."""
    return getattr(model, "ode_block", None)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- one process or several (torchrun) ----------------------------------------------------
def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size) under torchrun (WORLD_SIZE > 1): a process group with gloo on the
    CPU and nccl on GPUs; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def backward_step(
    model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, rank: int = 0, world: int = 1
) -> tuple[float, int, int]:
    """Forward and backward of one global batch, of which this process takes its share:
    the loss is scaled so that DistributedDataParallel's average over processes is the
    gradient of the mean loss over the whole batch, whatever the shard sizes.
    Returns (summed loss, correct predictions, samples) of this process's share."""
    xs, ys = torch.tensor_split(xb, world)[rank], torch.tensor_split(yb, world)[rank]
    out = model(xs)
    loss_sum = nn.functional.cross_entropy(out, ys, reduction="sum")
    (loss_sum * (world / len(xb))).backward()
    return loss_sum.item(), (out.argmax(1) == ys).sum().item(), len(xs)


def sum_over_processes(values: list, world: int, device: torch.device) -> list:
    if world == 1:
        return values
    import torch.distributed as dist

    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


# -- training -----------------------------------------------------------------------------
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on (x, y)."""
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for xb, yb in data.batches(x, y, batch_size):
            out = model(xb.to(device))
            loss += nn.functional.cross_entropy(out, yb.to(device), reduction="sum").item()
            correct += (out.argmax(1).cpu() == yb).sum().item()
    model.train()
    return correct / len(x), loss / len(x)


def train_epoch(
    net: nn.Module,
    block: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
    args: argparse.Namespace,
    device: torch.device,
    rank: int,
    world: int,
    description: str,
) -> dict:
    """One pass over (x, y) in `generator`'s batch order, with a progress bar on rank 0.
    Returns this process's sums: loss, correct, seen, forward_nfe, backward_nfe."""
    n_batches = math.ceil(len(x) / args.batch_size)
    sums = dict(loss=0.0, correct=0, seen=0, forward_nfe=0, backward_nfe=0)
    with tqdm(total=n_batches, desc=description, unit="batch", disable=rank != 0) as bar:
        for i, (xb, yb) in enumerate(data.batches(x, y, args.batch_size, generator)):
            xb, yb = xb.to(device), yb.to(device)
            if block is not None:
                block.reset_nfe()
            optimizer.zero_grad()
            loss_sum, right, count = backward_step(net, xb, yb, rank, world)
            optimizer.step()
            if block is not None:
                sums["forward_nfe"] += block.forward_nfe
                sums["backward_nfe"] += block.backward_nfe
            sums["loss"] += loss_sum
            sums["correct"] += right
            sums["seen"] += count
            postfix = {"loss": "%.3f" % (sums["loss"] / sums["seen"]), "acc": "%.3f" % (sums["correct"] / sums["seen"])}
            if block is not None:  # the mean NFE per batch so far
                postfix["fwd nfe"] = "%.0f" % (sums["forward_nfe"] / (i + 1))
                postfix["bwd nfe"] = "%.0f" % (sums["backward_nfe"] / (i + 1))
            bar.set_postfix(postfix, refresh=False)
            bar.update()
    return sums


def gradient_mode(args: argparse.Namespace) -> str | None:
    """--adjoint / --no-adjoint, None (the model's default) when neither is given."""
    return "adjoint" if args.adjoint else ("direct" if args.adjoint is False else None)


def train(args: argparse.Namespace) -> dict:
    """Trains args.model for args.epochs (continuing <out>/checkpoint.pt with args.resume),
    checkpointing after every epoch; writes metrics.json and the plots; returns the metrics."""
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    rank, world = init_distributed(device)
    log = print if rank == 0 else (lambda *a, **k: None)
    (x_train, y_train), (x_test, y_test) = data.load(args.data, args.data_dir)
    x_train, y_train, x_test, y_test = data.take_first(getattr(args, "limit", None), x_train, y_train, x_test, y_test)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    model = build_model(
        args.model, x_train.shape[1], num_classes, args.method, args.tol, gradient_mode(args), args.compile
    )
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    history, start_epoch = [], 0
    generator = torch.Generator().manual_seed(args.seed)  # the same batch order in every process
    if args.resume and os.path.exists(ckpt_path):
        state = checkpoints.load_checkpoint(ckpt_path)
        checkpoints.restore(state, ckpt_path, model, optimizer, scheduler, generator)
        history, start_epoch = state["history"], state["epoch"]
        log("resumed from %s at epoch %d" % (ckpt_path, start_epoch))
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    n_batches = math.ceil(len(x_train) / args.batch_size)
    for epoch in range(start_epoch, args.epochs):
        start = time.perf_counter()
        description = "epoch %d/%d" % (epoch + 1, args.epochs)
        sums = train_epoch(
            net, ode_block(model), optimizer, x_train, y_train, generator, args, device, rank, world, description
        )
        scheduler.step()
        total_loss, correct, seen = sum_over_processes([sums["loss"], sums["correct"], sums["seen"]], world, device)
        test_acc, test_loss = evaluate(model, x_test, y_test, args.batch_size, device)
        history.append(
            dict(
                epoch=epoch + 1,
                train_loss=total_loss / seen,
                train_acc=correct / seen,
                test_loss=test_loss,
                test_acc=test_acc,
                forward_nfe=sums["forward_nfe"] / n_batches,
                backward_nfe=sums["backward_nfe"] / n_batches,
                seconds=time.perf_counter() - start,
            )
        )
        log("epoch %d: test accuracy %.4f, test loss %.4f" % (epoch + 1, test_acc, test_loss))
        if rank == 0:
            state = checkpoints.training_state(model, optimizer, scheduler, epoch + 1, history, args, generator)
            checkpoints.save_checkpoint(ckpt_path, state)
    metrics = run_metrics(args, model, history, world)
    if rank == 0:
        write_json(os.path.join(args.out, "metrics.json"), metrics)
        plot_history(history, args.out, args.model)
        log(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
    return metrics


def run_metrics(args: argparse.Namespace, model: nn.Module, history: list, world: int) -> dict:
    """What metrics.json holds: the run's settings, final test accuracy and per-epoch history."""
    return dict(
        model=args.model,
        data=args.data,
        parameters=count_parameters(model),
        epochs=args.epochs,
        test_accuracy=history[-1]["test_acc"] if history else None,
        history=history,
        train_seconds=sum(h["seconds"] for h in history),
        world_size=world,
    )


def plot_history(history: list, out: str, title: str) -> list:
    """acc.png, loss.png and nfe.png in `out`: train and test per epoch, forward and backward NFE."""
    if not history:
        return []
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    paths = []
    for key, label in (("acc", "accuracy"), ("loss", "loss"), ("nfe", "NFE")):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        if key == "nfe":
            plot_line(ax, epochs, [h["forward_nfe"] for h in history], label="forward")
            plot_line(ax, epochs, [h["backward_nfe"] for h in history], label="backward")
        else:
            plot_line(ax, epochs, [h["train_" + key] for h in history], label="train")
            plot_line(ax, epochs, [h["test_" + key] for h in history], label="test")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)  # no ticks between epochs
        ax.set_ylabel(label)
        ax.set_title("%s: %s per epoch" % (title, label))
        ax.legend()
        paths.append(save_figure(fig, os.path.join(out, "%s.png" % key)))
    return paths


# -- command line -------------------------------------------------------------------------
def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `odecore train` and `odecore table1` share."""
    parser.add_argument(
        "--data", default="digits", choices=("digits", "mnist"), help="digits (bundled, default) or mnist"
    )
    parser.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (plain or .gz)")
    parser.add_argument("--method", default="dopri5")
    parser.add_argument("--tol", type=float, default=1e-3, help="rtol = atol of the ODE block")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--limit", type=int, default=None, help="use only the first N training and test images (quick runs)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="solve the ODE block as compiled programs (options={'compile': True}; the first batch compiles)",
    )


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The checks of the options of add_common_arguments (parser.error on a bad one)."""
    if args.epochs < 1 or args.batch_size < 1 or not 0 < args.tol < math.inf or not 0 < args.lr < math.inf:
        parser.error("--epochs, --batch-size, --tol and --lr must be positive (and finite)")
    if args.method not in SOLVERS:
        parser.error("--method must be one of %s, got %r" % (", ".join(sorted(SOLVERS)), args.method))
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be positive")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odecore train",
        description="Train an ODE-Net, RK-Net or ResNet classifier (the SDE-Net experiments: odecore train sdenet -h).",
    )
    parser.add_argument("model", choices=MODELS)
    add_common_arguments(parser)
    parser.add_argument(
        "--adjoint", dest="adjoint", action="store_true", default=None, help="adjoint gradients (odenet default)"
    )
    parser.add_argument("--no-adjoint", dest="adjoint", action="store_false", help="backprop through the solver")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="output folder (default runs/<model>)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error("--device must be cpu or cuda[:N], got %r" % args.device)
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
        parser.error(
            "--device %s is not available here (cpu%s)" % (args.device, ", cuda" if torch.cuda.is_available() else "")
        )
    if args.out is None:
        args.out = os.path.join("runs", args.model)
    try:
        train(args)
    except (ValueError, OSError) as error:  # bad data or output folder, corrupt file or checkpoint
        parser.error(str(error))
    return 0
