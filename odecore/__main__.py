"""The `odecore` command line: info, train, table1, demo, bench."""

import argparse
import json
import sys


def _info(args):
    import torch

    import odecore

    info = odecore.backend_info()
    info["solvers"] = sorted(odecore.SOLVERS)
    info["interop_threads"] = torch.get_num_interop_threads()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("odecore %s" % odecore.__version__)
    print("  fused CPU kernels : %s" % ("built" if info["cpu"] else "not built (reference path)"))
    print("  fused CUDA kernels: %s" % ("built (CUDA %s)" % info["cuda_version"] if info["cuda"] else "not built"))
    print("  built with torch  : %s" % info["torch_version"])
    print(
        "  running torch     : %s (CUDA available: %s)"
        % (info["runtime_torch_version"], info["runtime_cuda_available"])
    )
    print("  threads           : %d intra-op, %d inter-op" % (info["num_threads"], info["interop_threads"]))
    print("  backend           : %s" % info["backend"])
    print("  methods           : %s" % ", ".join(info["solvers"]))
    if info["load_error"]:
        print("  load error        : %s" % info["load_error"])
    return 0


def _module(name):
    import importlib

    return importlib.import_module("odecore." + name)


def _bench(argv):
    from . import bench

    return bench.main(argv)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="odecore", description="Neural differential equation solvers with fused kernels."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="which kernels are built, versions, threads")
    info.add_argument("--json", action="store_true", help="print as JSON")
    delegated = {
        "bench": ("benchmark the solver against the reference path and peers", lambda rest: _bench(rest)),
        "train": ("train an ODE-Net, RK-Net or ResNet classifier", lambda rest: _module("train").main_train(rest)),
        "table1": (
            "reproduce Table 1 of Chen et al. 2018 on the bundled data",
            lambda rest: _module("train").main_table1(rest),
        ),
        "demo": ("vdp | spiral | latent: short runs that write a PNG", lambda rest: _module("demos").main(rest)),
    }
    for name, (text, _) in delegated.items():
        sub.add_parser(name, help=text + " (see `odecore %s -h`)" % name, add_help=False)
    if argv and argv[0] in delegated:
        return delegated[argv[0]][1](argv[1:])
    args = parser.parse_args(argv)
    return _info(args)


if __name__ == "__main__":
    sys.exit(main())
