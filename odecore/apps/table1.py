"""`odecore table1`: Table 1 of Chen et al. 2018 ("Neural Ordinary Differential Equations"):
ResNet, RK-Net and ODE-Net trained alike, with test error, parameters, the memory autograd
saves for backward, the NFE and the time per iteration."""

import argparse
import math
import os

import torch
from torch import nn

from . import checkpoints, data
from .outputs import write_json, write_text
from .train import add_common_arguments, build_model, check_common_arguments, ode_block, train

MODEL_NAMES = {"resnet": "ResNet", "rknet": "RK-Net", "odenet": "ODE-Net"}


def saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
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


def training_arguments(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """The `odecore train` arguments of the table's run of model `name` (on the CPU, the
    model's default gradients, no resume)."""
    return argparse.Namespace(
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
        compile=getattr(args, "compile", False),
        device="cpu",
        out=os.path.join(args.out, name),
        resume=False,
        limit=args.limit,
    )


def memory_and_nfe(model: nn.Module, probe_x: torch.Tensor, probe_y: torch.Tensor, tol: float) -> dict:
    """Bytes saved for backward by one training forward of the probe batch, and the forward
    NFE there (None for a ResNet), at the tolerance and at 1/100 of it."""
    measured = {}
    for label, tolerance in (("tol", tol), ("tol/100", tol / 100)):
        block = ode_block(model)
        if block is not None:
            block.rtol = block.atol = tolerance
            block.reset_nfe()
        measured[label] = saved_bytes(model, probe_x, probe_y)
        measured[label + " nfe"] = block.forward_nfe if block is not None else None
    return measured


def table1(args: argparse.Namespace) -> list[dict]:
    """Trains ResNet, RK-Net and ODE-Net and measures the columns of the paper's Table 1;
    writes table1.md and table1.json in args.out and returns the rows."""
    rows = []
    (x_train, y_train), _ = data.load(args.data, args.data_dir)
    x_train, y_train = data.take_first(args.limit, x_train, y_train)
    probe_x, probe_y = x_train[: args.batch_size], y_train[: args.batch_size]
    for name in MODEL_NAMES:
        run = training_arguments(args, name)
        print("== %s" % name)
        metrics = train(run)
        model = build_model(name, x_train.shape[1], int(y_train.max()) + 1, args.method, args.tol)
        model.load_state_dict(checkpoints.load_checkpoint(os.path.join(run.out, "checkpoint.pt"))["model"])
        last = metrics["history"][-1]
        n_batches = math.ceil(len(x_train) / args.batch_size)
        memory = memory_and_nfe(model, probe_x, probe_y, args.tol)
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
    write_text(os.path.join(args.out, "table1.md"), text)
    write_json(os.path.join(args.out, "table1.json"), dict(rows=rows, settings=checkpoints.plain_arguments(args)))
    return rows


def format_table1(rows: list[dict], args: argparse.Namespace) -> str:
    """The rows as a Markdown table under a line stating the settings."""

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
                MODEL_NAMES[r["model"]],
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="odecore table1",
        description="Train ResNet, RK-Net and ODE-Net and print Table 1 "
        "of Chen et al. 2018 (Markdown and JSON in --out).",
    )
    add_common_arguments(parser)
    parser.add_argument("--out", default=os.path.join("runs", "table1"))
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    try:
        os.makedirs(args.out, exist_ok=True)
        table1(args)
    except (ValueError, OSError) as error:  # bad data or output folder, corrupt file
        parser.error(str(error))
    return 0
