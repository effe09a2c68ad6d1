"""The `odecore` command line: `info` here, and the dispatch of train, table1, demo and bench to
their modules (imported only when their command runs, for start-up time)."""

import argparse
import importlib
import json
import sys

import torch

from .. import SOLVERS, __version__, backend_info

# command: (help, the module whose main(argv) runs it on the rest of the command line)
COMMANDS = {
    "bench": ("benchmark the solver against the reference path and peers", "odecore.bench"),
    "train": ("train an ODE-Net, RK-Net or ResNet classifier", "odecore.apps.train"),
    "table1": ("reproduce Table 1 of Chen et al. 2018 on the bundled data", "odecore.apps.table1"),
    "demo": ("vdp | spiral | latent: short runs that write a PNG", "odecore.apps.demos"),
}
# `odecore train sdenet`: the SDE-Net experiments have their own command line
SDENET = "odecore.apps.sdenet"


def info(as_json: bool) -> int:
    """`odecore info`: which kernels are built, versions, threads, the methods."""
    details = backend_info()
    details["solvers"] = sorted(SOLVERS)
    details["interop_threads"] = torch.get_num_interop_threads()
    if as_json:
        print(json.dumps(details, indent=2))
        return 0
    cuda = "built (CUDA %s)" % details["cuda_version"] if details["cuda"] else "not built"
    print("odecore %s" % __version__)
    print("  fused CPU kernels : %s" % ("built" if details["cpu"] else "not built (reference path)"))
    print("  fused CUDA kernels: %s" % cuda)
    print("  built with torch  : %s" % details["torch_version"])
    print(
        "  running torch     : %s (CUDA available: %s)"
        % (details["runtime_torch_version"], details["runtime_cuda_available"])
    )
    print("  threads           : %d intra-op, %d inter-op" % (details["num_threads"], details["interop_threads"]))
    print("  backend           : %s" % details["backend"])
    print("  methods           : %s" % ", ".join(details["solvers"]))
    if details["load_error"]:
        print("  load error        : %s" % details["load_error"])
    return 0


def dispatch(command: str, rest: list[str]) -> int:
    """Runs `command`'s module on the rest of the command line."""
    module = COMMANDS[command][1]
    if command == "train" and rest and rest[0] == "sdenet":
        module, rest = SDENET, rest[1:]
    return importlib.import_module(module).main(rest)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="odecore", description="Neural differential equation solvers with fused kernels."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info_parser = sub.add_parser("info", help="which kernels are built, versions, threads")
    info_parser.add_argument("--json", action="store_true", help="print as JSON")
    for name, (text, _) in COMMANDS.items():
        # each delegated command parses its own options (and its own -h)
        sub.add_parser(name, help=text + " (see `odecore %s -h`)" % name, add_help=False)
    if argv and argv[0] in COMMANDS:
        return dispatch(argv[0], argv[1:])
    args = parser.parse_args(argv)
    return info(args.json)
