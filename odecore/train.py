"""`odecore train` and `odecore table1`: ODE-Net, RK-Net and ResNet classifiers (Chen et
al. 2018, section 3) on data that ships offline, with atomic checkpoints, resume, metrics
as JSON and plots as PNG."""

import argparse
import json
import math
import os
import sys
import time

import torch
from torch import nn

from . import data as datasets

MODELS = ("odenet", "rknet", "resnet")


# -- models -------------------------------------------------------------------------------
def build_model(name, in_channels, num_classes, method="dopri5", tol=1e-3, gradient=None):
    """The classifier `name` of odecore.nn with the paper's layout (its default 'res'
    downsampling takes MNIST's 28x28 to 7x7 and digits' 8x8 to 2x2)."""
    from . import nn as onn

    kwargs = dict(in_channels=in_channels, num_classes=num_classes)
    if name == "resnet":
        return onn.ResNet(**kwargs)
    if name in ("odenet", "rknet"):
        mode = gradient or ("direct" if name == "rknet" else "adjoint")
        return onn.ODENet(method=method, rtol=tol, atol=tol, gradient=mode, **kwargs)
    raise ValueError("unknown model %r (choose %s)" % (name, ", ".join(MODELS)))


def ode_block(model):
    return getattr(model, "ode_block", None)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- progress -----------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total, prefix, stream=sys.stderr, width=24):
        self.total, self.prefix, self.stream, self.width = total, prefix, stream, width
        self.start = time.perf_counter()

    def update(self, done, **fields):
        frac = done / max(self.total, 1)
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        info = " ".join("%s=%s" % (k, v) for k, v in fields.items())
        elapsed = time.perf_counter() - self.start
        self.stream.write("\r%s [%s] %d/%d %.0fs %s" % (self.prefix, bar, done, self.total, elapsed, info))
        self.stream.flush()

    def close(self):
        self.stream.write("\n")
        self.stream.flush()


# -- checkpoints --------------------------------------------------------------------------
CHECKPOINT_KEYS = {"format", "model", "optimizer", "scheduler", "epoch", "history", "args", "rng"}


def save_checkpoint(path, state):
    """Writes atomically: a temporary file in the same folder, flushed to disk, then a rename
    (a run killed mid-write leaves the previous checkpoint; an exception removes the
    temporary file)."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def load_checkpoint(path):
    """Loads with weights_only=True (no code execution) and checks the contents."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            "checkpoint %s is corrupted or not an odecore checkpoint (%s: %s)" % (path, type(error).__name__, error)
        ) from None
    if not isinstance(state, dict) or set(state) != CHECKPOINT_KEYS or state.get("format") != "odecore-train-1":
        raise ValueError("checkpoint %s is not an odecore training checkpoint" % path)
    kinds = {"model": dict, "optimizer": dict, "scheduler": dict, "history": list, "args": dict, "rng": torch.Tensor}
    bad = sorted(key for key, kind in kinds.items() if not isinstance(state[key], kind))
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        bad.append("epoch")
    if bad:
        raise ValueError("checkpoint %s is corrupted: wrong type of %s" % (path, ", ".join(bad)))
    return state


def restore(state, path, model, optimizer, scheduler, generator):
    """Loads a checkpoint's states into the run's objects; a checkpoint of another model or
    other options is a ValueError (the command line reports it), not a traceback."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        raise ValueError(
            "checkpoint %s does not match this run (another model or other options?): %s: %s"
            % (path, type(error).__name__, str(error).strip().splitlines()[0] if str(error).strip() else "")
        ) from None


# -- training -----------------------------------------------------------------------------
def batches(x, y, batch_size, generator=None):
    order = torch.randperm(len(x), generator=generator) if generator is not None else torch.arange(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def evaluate(model, x, y, batch_size, device):
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for xb, yb in batches(x, y, batch_size):
            out = model(xb.to(device))
            loss += nn.functional.cross_entropy(out, yb.to(device), reduction="sum").item()
            correct += (out.argmax(1).cpu() == yb).sum().item()
    model.train()
    return correct / len(x), loss / len(x)


def init_distributed(device):
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


def backward_step(model, xb, yb, rank=0, world=1):
    """Forward and backward of one global batch, of which this process takes its share:
    the loss is scaled so that DistributedDataParallel's average over processes is the
    gradient of the mean loss over the whole batch, whatever the shard sizes.
    Returns (summed loss, correct predictions, samples) of this process's share."""
    xs, ys = torch.tensor_split(xb, world)[rank], torch.tensor_split(yb, world)[rank]
    out = model(xs)
    loss_sum = nn.functional.cross_entropy(out, ys, reduction="sum")
    (loss_sum * (world / len(xb))).backward()
    return loss_sum.item(), (out.argmax(1) == ys).sum().item(), len(xs)


def _all_sum(values, world, device):
    if world == 1:
        return values
    import torch.distributed as dist

    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def train(args):
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    rank, world = init_distributed(device)
    log = print if rank == 0 else (lambda *a, **k: None)
    (x_train, y_train), (x_test, y_test) = datasets.load(args.data, args.data_dir)
    if getattr(args, "limit", None):
        x_train, y_train, x_test, y_test = (
            x_train[: args.limit],
            y_train[: args.limit],
            x_test[: args.limit],
            y_test[: args.limit],
        )
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    model = build_model(
        args.model,
        x_train.shape[1],
        num_classes,
        args.method,
        args.tol,
        "adjoint" if args.adjoint else ("direct" if args.adjoint is False else None),
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    history, start_epoch = [], 0
    generator = torch.Generator().manual_seed(args.seed)  # the same batch order in every process
    if args.resume and os.path.exists(ckpt_path):
        state = load_checkpoint(ckpt_path)
        restore(state, ckpt_path, model, optimizer, scheduler, generator)
        history, start_epoch = state["history"], state["epoch"]
        log("resumed from %s at epoch %d" % (ckpt_path, start_epoch))
    block = ode_block(model)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    for epoch in range(start_epoch, args.epochs):
        n_batches = math.ceil(len(x_train) / args.batch_size)
        bar = Progress(n_batches, "epoch %d/%d" % (epoch + 1, args.epochs)) if rank == 0 else None
        total_loss = correct = seen = 0
        fwd_nfe = bwd_nfe = 0
        start = time.perf_counter()
        for i, (xb, yb) in enumerate(batches(x_train, y_train, args.batch_size, generator)):
            xb, yb = xb.to(device), yb.to(device)
            if block is not None:
                block.reset_nfe()
            optimizer.zero_grad()
            loss_sum, right, count = backward_step(net, xb, yb, rank, world)
            optimizer.step()
            if block is not None:
                fwd_nfe += block.forward_nfe
                bwd_nfe += block.backward_nfe
            total_loss, correct, seen = total_loss + loss_sum, correct + right, seen + count
            if bar is not None:
                fields = dict(loss="%.3f" % (total_loss / seen), acc="%.3f" % (correct / seen))
                if block is not None:
                    fields["nfe"] = "%.0f/%.0f" % (fwd_nfe / (i + 1), bwd_nfe / (i + 1))
                bar.update(i + 1, **fields)
        if bar is not None:
            bar.close()
        scheduler.step()
        total_loss, correct, seen = _all_sum([total_loss, correct, seen], world, device)
        test_acc, test_loss = evaluate(model, x_test, y_test, args.batch_size, device)
        history.append(
            dict(
                epoch=epoch + 1,
                train_loss=total_loss / seen,
                train_acc=correct / seen,
                test_loss=test_loss,
                test_acc=test_acc,
                forward_nfe=fwd_nfe / n_batches,
                backward_nfe=bwd_nfe / n_batches,
                seconds=time.perf_counter() - start,
            )
        )
        log("epoch %d: test accuracy %.4f, test loss %.4f" % (epoch + 1, test_acc, test_loss))
        if rank == 0:
            save_checkpoint(
                ckpt_path,
                dict(
                    format="odecore-train-1",
                    model=model.state_dict(),
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    epoch=epoch + 1,
                    history=history,
                    args=vars_for_checkpoint(args),
                    rng=generator.get_state(),
                ),
            )
    metrics = dict(
        model=args.model,
        data=args.data,
        parameters=count_parameters(model),
        epochs=args.epochs,
        test_accuracy=history[-1]["test_acc"] if history else None,
        history=history,
        train_seconds=sum(h["seconds"] for h in history),
        world_size=world,
    )
    if rank == 0:
        with open(os.path.join(args.out, "metrics.json"), "w") as handle:
            json.dump(metrics, handle, indent=2)
        plot_history(history, args.out, args.model)
        log(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
    return metrics


def vars_for_checkpoint(args):
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) or v is None}


def plot_history(history, out, title):
    if not history:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    paths = []
    for key, label in (("acc", "accuracy"), ("loss", "loss"), ("nfe", "NFE")):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        if key == "nfe":
            ax.plot(epochs, [h["forward_nfe"] for h in history], label="forward")
            ax.plot(epochs, [h["backward_nfe"] for h in history], label="backward")
        else:
            ax.plot(epochs, [h["train_" + key] for h in history], label="train")
            ax.plot(epochs, [h["test_" + key] for h in history], label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title("%s: %s per epoch" % (title, label))
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out, "%s.png" % key)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def add_train_arguments(parser):
    parser.add_argument("model", choices=MODELS)
    parser.add_argument(
        "--data", default="digits", choices=("digits", "mnist"), help="digits (bundled, default) or mnist"
    )
    parser.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (plain or .gz)")
    parser.add_argument("--method", default="dopri5")
    parser.add_argument("--tol", type=float, default=1e-3, help="rtol = atol of the ODE block")
    parser.add_argument(
        "--adjoint", dest="adjoint", action="store_true", default=None, help="adjoint gradients (odenet default)"
    )
    parser.add_argument("--no-adjoint", dest="adjoint", action="store_false", help="backprop through the solver")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="output folder (default runs/<model>)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    parser.add_argument(
        "--limit", type=int, default=None, help="use only the first N training and test images (quick runs)"
    )


def main_train(argv):
    if argv and argv[0] == "sdenet":
        from .ood import main as main_sdenet

        return main_sdenet(argv[1:])
    parser = argparse.ArgumentParser(prog="odecore train", description="Train an ODE-Net, RK-Net or ResNet classifier.")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or not 0 < args.tol < math.inf or not 0 < args.lr < math.inf:
        parser.error("--epochs, --batch-size, --tol and --lr must be positive (and finite)")
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


def check_common_arguments(parser, args):
    """--method and --limit of `odecore train` and `odecore table1`."""
    from .solvers import SOLVERS

    if args.method not in SOLVERS:
        parser.error("--method must be one of %s, got %r" % (", ".join(sorted(SOLVERS)), args.method))
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be positive")


# -- Table 1 ------------------------------------------------------------------------------
def saved_bytes(model, x, y):
    """Bytes the autograd graph of one training forward saves for backward."""
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad()
    return total[0]


def table1(args):
    """Trains ResNet, RK-Net and ODE-Net and measures the columns of the paper's Table 1."""
    rows = []
    (x_train, y_train), _ = datasets.load(args.data, args.data_dir)
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    probe_x, probe_y = x_train[: args.batch_size], y_train[: args.batch_size]
    for name in ("resnet", "rknet", "odenet"):
        run = argparse.Namespace(
            model=name,
            data=args.data,
            data_dir=args.data_dir,
            method=args.method,
            tol=args.tol,
            adjoint=None,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device="cpu",
            out=os.path.join(args.out, name),
            resume=False,
            limit=args.limit,
        )
        print("== %s" % name)
        metrics = train(run)
        model = build_model(name, x_train.shape[1], int(y_train.max()) + 1, args.method, args.tol)
        state = load_checkpoint(os.path.join(run.out, "checkpoint.pt"))
        model.load_state_dict(state["model"])
        last = metrics["history"][-1]
        n_batches = math.ceil(len(x_train) / args.batch_size)
        memory = {}
        for label, tol in (("tol", args.tol), ("tol/100", args.tol / 100)):
            block = ode_block(model)
            if block is not None:
                block.rtol = block.atol = tol
                block.reset_nfe()
            memory[label] = saved_bytes(model, probe_x, probe_y)
            memory[label + " nfe"] = block.forward_nfe if block is not None else None
        rows.append(
            dict(
                model=name,
                test_error=1.0 - metrics["test_accuracy"],
                parameters=metrics["parameters"],
                backward_memory_bytes=memory["tol"],
                backward_memory_bytes_tight=memory["tol/100"],
                forward_nfe_at_tol=memory["tol nfe"],
                forward_nfe_tight=memory["tol/100 nfe"],
                seconds_per_iteration=last["seconds"] / n_batches,
                forward_nfe=last["forward_nfe"] if name != "resnet" else None,
                backward_nfe=last["backward_nfe"] if name != "resnet" else None,
            )
        )
    text = format_table1(rows, args)
    print(text)
    with open(os.path.join(args.out, "table1.md"), "w") as handle:
        handle.write(text + "\n")
    with open(os.path.join(args.out, "table1.json"), "w") as handle:
        json.dump(dict(rows=rows, settings=vars_for_checkpoint(args)), handle, indent=2)
    return rows


def format_table1(rows, args):
    def mb(v):
        return "%.2f MB" % (v / 2**20)

    def num(v, fmt="%.1f"):
        return "-" if v is None else fmt % v

    lines = [
        "Table 1 of Chen et al. 2018 on %s (%d epochs, %s, rtol = atol = %g; memory: bytes saved for backward by "
        "one training forward of a batch of %d, at the tolerance and at 1/100 of it, with the forward NFE there)"
        % (args.data, args.epochs, args.method, args.tol, args.batch_size),
        "",
        "| model | test error | # params | memory (tol) | memory (tol/100) | NFE (tol -> tol/100) | time / iter "
        "| forward NFE | backward NFE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        nfe = "-" if r["forward_nfe_at_tol"] is None else "%d -> %d" % (r["forward_nfe_at_tol"], r["forward_nfe_tight"])
        lines.append(
            "| %s | %.2f%% | %.3fM | %s | %s | %s | %.3f s | %s | %s |"
            % (
                {"resnet": "ResNet", "rknet": "RK-Net", "odenet": "ODE-Net"}[r["model"]],
                100 * r["test_error"],
                r["parameters"] / 1e6,
                mb(r["backward_memory_bytes"]),
                mb(r["backward_memory_bytes_tight"]),
                nfe,
                r["seconds_per_iteration"],
                num(r["forward_nfe"]),
                num(r["backward_nfe"]),
            )
        )
    return "\n".join(lines)


def main_table1(argv):
    parser = argparse.ArgumentParser(
        prog="odecore table1",
        description="Train ResNet, RK-Net and ODE-Net and print Table 1 "
        "of Chen et al. 2018 (Markdown and JSON in --out).",
    )
    parser.add_argument("--data", default="digits", choices=("digits", "mnist"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--method", default="dopri5")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("runs", "table1"))
    parser.add_argument(
        "--limit", type=int, default=None, help="use only the first N training and test images (quick runs)"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or not 0 < args.tol < math.inf or not 0 < args.lr < math.inf:
        parser.error("--epochs, --batch-size, --tol and --lr must be positive (and finite)")
    check_common_arguments(parser, args)
    try:
        os.makedirs(args.out, exist_ok=True)
        table1(args)
    except (ValueError, OSError) as error:  # bad data or output folder, corrupt file
        parser.error(str(error))
    return 0
