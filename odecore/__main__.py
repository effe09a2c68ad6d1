"""The `odecore` command line: `odecore info`, `odecore bench`, `odecore demo`."""
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
    print("  running torch     : %s (CUDA available: %s)" % (info["runtime_torch_version"], info["runtime_cuda_available"]))
    print("  threads           : %d intra-op, %d inter-op" % (info["num_threads"], info["interop_threads"]))
    print("  backend           : %s" % info["backend"])
    print("  methods           : %s" % ", ".join(info["solvers"]))
    if info["load_error"]:
        print("  load error        : %s" % info["load_error"])
    return 0


def _demo(args):
    """Solves Van der Pol with every method on both backends and checks they agree."""
    import time

    import torch

    import odecore

    torch.manual_seed(0)
    y0 = torch.randn(args.batch, 2, dtype=torch.float64)
    t = torch.linspace(0.0, 8.2, 50, dtype=torch.float64)

    def van_der_pol(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, 2.0 * (1 - x * x) * v - x], dim=-1)

    print("Van der Pol (mu=2), batch %d, t in [0, 8.2], rtol=atol=1e-6" % args.batch)
    print("%-14s %6s %7s %10s %10s %12s" % ("method", "nfe", "steps", "fused ms", "ref ms", "max |diff|"))
    for method in odecore.SOLVERS:
        options = {"step_size": 0.01} if odecore.SOLVERS[method].__name__ in {"Euler", "Midpoint", "Heun2", "Heun3", "RK4"} else {}
        results = {}
        for backend in ("fused", "reference"):
            start = time.perf_counter()
            y, stats = odecore.odeint(van_der_pol, y0, t, rtol=1e-6, atol=1e-6, method=method,
                                      options=dict(options, backend=backend, return_stats=True))
            results[backend] = (y, stats, (time.perf_counter() - start) * 1e3)
        (yf, stats, tf), (yr, _, tr) = results["fused"], results["reference"]
        print("%-14s %6d %7d %10.2f %10.2f %12.2e" % (method, stats["nfe"], stats["n_steps"], tf, tr, (yf - yr).abs().max().item()))
    return 0


def _bench(argv):
    from . import bench

    return bench.main(argv)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="odecore", description="Neural differential equation solvers with fused kernels.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="which kernels are built, versions, threads")
    info.add_argument("--json", action="store_true", help="print as JSON")
    sub.add_parser("bench", help="benchmark the solver against the reference path and peers (see `odecore bench -h`)", add_help=False)
    demo = sub.add_parser("demo", help="solve Van der Pol with every method on both backends")
    demo.add_argument("--batch", type=int, default=256)
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    args = parser.parse_args(argv)
    return {"info": _info, "demo": _demo}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
