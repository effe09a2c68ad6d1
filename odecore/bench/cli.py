"""``odecore bench``: the command line over the solve, GPU, adjoint and compile-time suites
(arguments, their checks, the runs, the printed tables and the --json / --markdown files)."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .adjoint import run_adjoint
from .compile_times import run_compile_times
from .impls import IMPLEMENTATIONS, default_implementations, whole_program_implementations
from .problems import ADJOINT_PROBLEMS, GPU_FAMILIES, PROBLEMS, Problem, gpu_problems
from .report import environment, print_tables
from .runner import run

# --threads above this is refused (torch accepts any count; far more abort the process)
MAX_THREADS = 1024

DTYPES = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32, "float": torch.float32}


def _parse_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="odecore bench",
        description="Benchmark odecore (fused and reference backends, compiled whole solve) against "
        "torchdiffeq, torchode and diffrax side by side. Loop time per step = "
        "(solve time - nfe * func time) / steps; solver ops and host reads per step "
        "are counted in one extra solve.",
    )
    _add_selection_arguments(p)
    _add_run_arguments(p)
    _add_output_arguments(p)
    return p


def _add_selection_arguments(p: argparse.ArgumentParser) -> None:
    """Which suite, problems, sizes and implementations."""
    p.add_argument(
        "--suite",
        choices=("solve", "gpu"),
        default="solve",
        help="solve (default): the problems below; gpu: Van der Pol at batch 256/4096/65536, "
        f"a Lorenz ensemble (rk4 dt 1e-3, tsit5 1e-6) of 2^10/2^14/2^20 members and the "
        f"ODE-Net block ({','.join(GPU_FAMILIES)}); see --sizes",
    )
    p.add_argument(
        "--problems",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"subset of problems (space- or comma-separated); default all: {','.join(PROBLEMS)}; "
        f"adjoint problems ({','.join(ADJOINT_PROBLEMS)}) run the adjoint suite; with --suite gpu: "
        f"families ({','.join(GPU_FAMILIES)}) or single sizes (e.g. lorenz_rk4_1024)",
    )
    p.add_argument(
        "--sizes",
        default="auto",
        metavar="auto|small|full|N,N",
        help="GPU suite sizes: full = the issue's (up to 2^20 Lorenz members), small = a CPU smoke run, "
        "auto (default) = full on CUDA, small elsewhere; or integers for every family",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="override the batch size of every problem of the solve suite (GPU suite: --sizes)",
    )
    p.add_argument(
        "--impls",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"subset of implementations ({','.join(IMPLEMENTATIONS)}); default all installed but the "
        f"whole-program ones: {','.join(default_implementations())}",
    )


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """How each case runs: repeats, device, dtype, grad mode, budgets, what is counted."""
    p.add_argument("--repeats", type=int, default=5, help="timed solves per case (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up solves per case (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float64", choices=sorted(DTYPES), help="default float64")
    p.add_argument(
        "--grad", action="store_true", help="autograd recording: y0 requires grad and the graph is built (no backward)"
    )
    p.add_argument(
        "--adjoint",
        action="store_true",
        help="run the adjoint suite: forward + backward through odeint_adjoint (all adjoint problems "
        "unless some are named in --problems); solve problems run only when named in --problems",
    )
    p.add_argument(
        "--case-budget",
        type=float,
        default=None,
        metavar="S",
        help="seconds one implementation may spend on one problem: a longer solve is stopped and "
        "skipped (with a note; also at that family's larger sizes), repeats are cut to fit; "
        "default: none, 60 with --suite gpu; 0 = none",
    )
    p.add_argument(
        "--sync-every",
        type=int,
        default=None,
        metavar="K",
        help="pass options={'sync_every': K} to odecore (where this odecore takes it; else a note)",
    )
    p.add_argument(
        "--compile-times",
        action="store_true",
        help="instead of the solve suite: the first-call (compile) time of the whole-program "
        f"implementations ({','.join(whole_program_implementations())}) on the --problems, each in two "
        "fresh processes sharing one new on-disk compile cache (cold, then warm)",
    )
    p.add_argument("--no-ops", action="store_true", help="skip the op / host-read counting solve")
    p.add_argument("--no-kernels", action="store_true", help="skip the profiled solve (kernels/step on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before running")


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    """Files to write, and the commands that only print (saved tables, the listing)."""
    p.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="also write results + environment as JSON (rewritten after every problem)",
    )
    p.add_argument(
        "--markdown",
        metavar="PATH",
        default=None,
        help="also write the tables as Markdown (rewritten after every problem)",
    )
    p.add_argument(
        "--from-json",
        metavar="PATH",
        default=None,
        help="print the tables of a JSON written by --json (even a partial one) and exit",
    )
    p.add_argument("--list", action="store_true", help="list problems and implementations and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def _print_saved_tables(path: str) -> int:
    """``--from-json``: the tables of a saved run."""
    try:
        with open(path) as fh:
            data = json.load(fh)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        print(f"odecore bench: --from-json {path}: cannot read it ({e})", file=sys.stderr)
        return 2
    env = data.get("environment", {})
    print(
        f"device={env.get('device')} dtype={env.get('dtype')} torch={env.get('torch')} "
        f"argv={' '.join(data.get('argv', []))}{' (partial)' if data.get('partial') else ''}"
    )
    print_tables(data.get("results", []))
    return 0


def _print_listing() -> None:
    """``--list``: every problem, implementation (installed or not), adjoint problem and GPU family."""
    for p in PROBLEMS.values():
        print(f"{p.name:12s} {p.method:7s} rtol={p.rtol:g} atol={p.atol:g} {p.options or ''}  {p.description}")
    for name, impl in IMPLEMENTATIONS.items():
        print(f"{name:20s} {'available' if impl.available() else 'not installed'}")
    print("adjoint problems (--adjoint; forward + backward through odeint_adjoint):")
    for p in ADJOINT_PROBLEMS.values():
        print(f"{p.name:18s} {p.method:7s} rtol={p.rtol:g} atol={p.atol:g} {p.options or ''}  {p.description}")
    print("GPU suite (--suite gpu; sizes full / small):")
    for f in GPU_FAMILIES.values():
        print(
            f"{f.name:14s} {f.method:7s} rtol={f.rtol:g} atol={f.atol:g} {f.options or ''}  {f.description}; "
            f"N = {'/'.join(map(str, f.full))} / {'/'.join(map(str, f.small))}"
        )


def _checked_device(args: argparse.Namespace) -> torch.device:
    """The device of ``--device``, or ValueError when it is not one this machine can run."""
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ValueError(f"--device {args.device!r} is not a device ({e})") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch.cuda.is_available() is False")
    return device


def _check_numbers(args: argparse.Namespace) -> None:
    """ValueError for a count or budget the runs cannot use."""
    if args.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    if args.batch is not None and args.batch < 1:
        raise ValueError("--batch must be >= 1")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise ValueError(f"--threads must be between 1 and {MAX_THREADS}")
    if args.warmup < 0:
        raise ValueError("--warmup must be >= 0")
    if args.case_budget is not None and math.isnan(args.case_budget):
        raise ValueError("--case-budget must be a number of seconds")


@dataclass
class _Plan:
    """What one ``odecore bench`` call runs."""

    device: torch.device
    dtype: torch.dtype
    budget: float | None  # --case-budget in seconds, None for none
    impls: list[str] | None  # None: every installed implementation
    solve_problems: list[str] | list[Problem] | None  # None: every solve problem
    adjoint_problems: list[str] | None  # None: every adjoint problem
    solve_suite: bool
    adjoint_suite: bool
    compile_suite: bool = False


def _plan(args: argparse.Namespace, device: torch.device) -> _Plan:
    """The suites and problems to run; ValueError for a problem name no suite has."""
    problems = [x for s in (args.problems or []) for x in _parse_list(s)] or None
    budget = args.case_budget
    if budget is None and args.suite == "gpu":
        budget = 60.0
    if budget is not None and budget <= 0:
        budget = None
    solve_problems, adjoint_problems = problems, None
    if args.suite == "gpu":
        solve_problems = gpu_problems(problems, args.sizes, device)
        solve_suite, adjoint_suite = True, args.adjoint
    else:
        if problems is not None:
            unknown = [n for n in problems if n not in PROBLEMS and n not in ADJOINT_PROBLEMS]
            if unknown:
                raise ValueError(
                    f"unknown problem {unknown[0]!r}; choose from {sorted(PROBLEMS) + sorted(ADJOINT_PROBLEMS)}"
                )
            solve_problems = [n for n in problems if n in PROBLEMS]
            adjoint_problems = [n for n in problems if n in ADJOINT_PROBLEMS] or None
        solve_suite = bool(solve_problems) or (problems is None and not args.adjoint)
        adjoint_suite = args.adjoint or adjoint_problems is not None
    impls = [x for s in (args.impls or []) for x in _parse_list(s)] or None
    if args.compile_times:
        return _compile_times_plan(args, device, problems, impls)
    return _Plan(
        device, DTYPES[args.dtype], budget, impls, solve_problems, adjoint_problems, solve_suite, adjoint_suite
    )


def _compile_times_plan(
    args: argparse.Namespace, device: torch.device, problems: list[str] | None, impls: list[str] | None
) -> _Plan:
    """``--compile-times``: the compile-time suite alone, on solve problems and whole-program impls."""
    if args.suite != "solve" or args.adjoint:
        raise ValueError("--compile-times measures the solve problems only (not with --suite gpu or --adjoint)")
    not_solve = [n for n in problems or [] if n not in PROBLEMS]
    if not_solve:
        raise ValueError(f"--compile-times measures the solve problems only, not {not_solve[0]!r}")
    if impls is not None:
        for name in impls:
            if name not in IMPLEMENTATIONS:
                raise ValueError(f"unknown implementation {name!r}; choose from {sorted(IMPLEMENTATIONS)}")
        impls = [n for n in impls if n in whole_program_implementations()]
        if not impls:
            raise ValueError(f"--compile-times measures {', '.join(whole_program_implementations())} only")
    return _Plan(device, DTYPES[args.dtype], None, impls, problems or list(PROBLEMS), None, False, False, True)


def _replace_file(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file, so a reader never sees half of it."""
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class _ResultFiles:
    """The ``--json`` and ``--markdown`` files of a run, rewritten after every problem."""

    def __init__(self, args: argparse.Namespace, env: dict[str, Any], argv: list[str], budget: float | None):
        self.args, self.env, self.argv, self.budget = args, env, argv, budget

    def save(self, results: list[dict[str, Any]], partial: bool) -> None:
        if self.args.json:
            record = dict(
                environment=self.env,
                argv=self.argv,
                partial=partial,
                suite=self.args.suite,
                case_budget_s=self.budget,
                results=results,
            )
            _replace_file(self.args.json, json.dumps(record, indent=2, default=str))
        if self.args.markdown:
            env = self.env
            buf = io.StringIO()
            print(
                f"`odecore bench {' '.join(self.argv)}`: device={env['device']} dtype={env['dtype']} "
                f"grad={env['grad']} torch={env['torch']} threads={torch.get_num_threads()}"
                f"{' (partial: interrupted or still running)' if partial else ''}\n",
                file=buf,
            )
            print_tables(results, out=buf)
            _replace_file(self.args.markdown, buf.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json:
        return _print_saved_tables(args.from_json)
    if args.list:
        _print_listing()
        return 0
    try:
        device = _checked_device(args)
        _check_numbers(args)
        plan = _plan(args, device)
    except ValueError as e:
        print(f"odecore bench: {e}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run_and_report(args, plan, list(argv) if argv is not None else sys.argv[1:])
    finally:
        # a caller from Python (a test, a notebook) keeps its own thread count
        if args.threads:
            torch.set_num_threads(threads)


def _run_and_report(args: argparse.Namespace, plan: _Plan, argv: list[str]) -> int:
    """Runs the planned suites, prints their tables and writes the files asked for."""
    env = environment(plan.device, plan.dtype, args.grad)
    files = _ResultFiles(args, env, argv, plan.budget)
    if args.suite == "gpu" and not args.quiet:
        print(
            f"[bench] GPU suite: {', '.join(p.name for p in plan.solve_problems)}"
            f"{'' if plan.budget is None else f'; case budget {plan.budget:g} s'}",
            file=sys.stderr,
            flush=True,
        )
    results: list[dict[str, Any]] = []
    adjoint_results: list[dict[str, Any]] = []
    try:
        if plan.compile_suite:
            results = run_compile_times(
                plan.solve_problems,
                plan.impls,
                device=str(plan.device),
                dtype=plan.dtype,
                threads=args.threads,
                batch=args.batch,
                verbose=not args.quiet,
            )
        if plan.solve_suite:
            results = run(
                plan.solve_problems,
                plan.impls,
                device=plan.device,
                dtype=plan.dtype,
                grad=args.grad,
                repeats=args.repeats,
                warmup=args.warmup,
                verbose=not args.quiet,
                batch=args.batch if args.suite == "solve" else None,
                count_ops=not args.no_ops,
                kernels=(False if args.no_kernels else None),
                case_budget_s=plan.budget,
                sync_every=args.sync_every,
                suite=args.suite,
                on_problem=lambda res: files.save(res, True),
            )
        if plan.adjoint_suite:
            adjoint_results = run_adjoint(
                plan.adjoint_problems,
                plan.impls,
                device=plan.device,
                dtype=plan.dtype,
                repeats=args.repeats,
                warmup=args.warmup,
                verbose=not args.quiet,
            )
    except ValueError as e:
        print(f"odecore bench: {e}", file=sys.stderr)
        return 2
    env["torch_threads"] = torch.get_num_threads()
    print(
        f"device={env['device']} dtype={env['dtype']} grad={env['grad']} torch={env['torch']} "
        f"threads={env['torch_threads']} repeats={args.repeats}"
    )
    results = results + adjoint_results
    print_tables(results)
    files.save(results, False)
    for path in (args.json, args.markdown):
        if path:
            print(f"wrote {path}")
    return 0
