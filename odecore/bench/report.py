"""The benchmarks' output: Markdown tables of the result rows (solve, GPU, adjoint and
compile-time suites) with their footers, and the environment record (versions, threads,
odecore's backend) saved beside them.
"""

from __future__ import annotations

import datetime
import importlib
import math
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import torch

import odecore

from .runner import dtype_name

TABLE_FOOTER = (
    "loop µs/step = (best solve time - nfe × median func time) / steps; "
    "speedup = the other's loop / this row's loop. solver ops/step = ATen + odecore:: ops "
    "dispatched outside func in one solve (setup included) / steps; host reads/step = the "
    "solver's device-to-host reads (.item(), bool(tensor), .tolist(), D2H copies, nonzero...) / steps."
)
TABLE_FOOTER_WHOLE_PROGRAM = (
    "odecore-compiled and diffrax run the whole solve, func included, as one compiled program: "
    "no loop / func split (loop µs/step –), no op counts; compare solve ms. solve speedup = the "
    "other's best solve / this row's. compile s = first call - best solve (tracing and compiling, "
    "in this process). diffrax reports no nfe; its steps are its num_steps (accepted + rejected)."
)
COMPILE_TABLE_FOOTER = (
    "Each case in two fresh processes sharing one new on-disk cache directory (TORCHINDUCTOR_CACHE_DIR; "
    "JAX's persistent compilation cache): cold = the first process (empty cache), warm = the second. "
    "first call s = the wall time of the first solve in the process; compile s = first call - best "
    "of 3 later solves; process s = the whole child process (interpreter start and imports included). "
    "JAX does not write programs with host callbacks to its persistent cache, and diffrax's solve has "
    "them (its runtime checks): its warm first call compiles again."
)
TABLE_FOOTER_CUDA = (
    "CUDA syncs/step: synchronising calls flagged by torch.cuda.set_sync_debug_mode('warn') "
    "outside func / steps; kernels/step: CUDA kernels in one profiled solve (func's included) / steps."
)
ADJOINT_TABLE_FOOTER = (
    "adjoint: one run = odeint_adjoint forward + loss + loss.backward(); fwd/bwd/fwd+bwd ms = best "
    "of the repeats; bwd loop µs/step = (best bwd time - bwd nfe × median VJP time) / bwd steps; "
    "fwd+bwd speedup = torchdiffeq fwd+bwd / impl fwd+bwd."
)


def _fmt(x, spec):
    if x is None:
        return "–"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return format(x, spec)


def _speedup(x, spec):
    return "–" if x is None else f"{x:{spec}}×"


def _cell_notes(notes) -> str:
    return "; ".join(str(n) for n in (notes or [])).replace("|", "/")


def _header_lines(head: list[str], notes_column: bool = False) -> list[str]:
    """The header and alignment rows: problem and impl (and notes) left, numbers right."""
    align = ["---", "---"] + ["---:"] * (len(head) - 2 - notes_column) + ["---"] * notes_column
    return ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]


@dataclass
class _SolveColumns:
    """Which optional columns a solve table has."""

    gpu: bool  # GPU-suite rows: the comparison is with odecore's reference path
    cuda: bool
    kernels: bool
    ops: bool
    notes: bool
    whole_program: bool  # rows of implementations whose first call compiles

    @classmethod
    def of(cls, results: Sequence[dict[str, Any]], kernels: bool | None) -> _SolveColumns:
        gpu = any(r.get("suite") == "gpu" for r in results)
        cuda = any(str(r.get("device", "")).startswith("cuda") for r in results)
        return cls(
            gpu=gpu,
            cuda=cuda,
            kernels=(gpu or cuda) if kernels is None else kernels,
            ops=any(r.get("solver_ops_per_step") is not None for r in results),
            notes=any(r.get("notes") for r in results),
            whole_program=any(r.get("first_call_s") is not None for r in results),
        )

    def head(self) -> list[str]:
        head = [
            "problem",
            "impl",
            "nfe",
            "steps (acc/rej)",
            "func µs",
            "solve ms (best / median)",
            "loop µs/step",
            "loop speedup vs torchdiffeq",
        ]
        if self.gpu:
            head.append("loop speedup vs reference")
        if self.whole_program:
            head += ["solve speedup vs reference" if self.gpu else "solve speedup vs torchdiffeq", "compile s"]
        if self.ops:
            head += ["solver ops/step", "host reads/step"]
        if self.cuda:
            head.append("CUDA syncs/step")
        if self.kernels:
            head.append("kernels/step")
        head.append("max \\|Δy\\| vs reference" if self.gpu else "max \\|Δy\\| vs torchdiffeq")
        if self.notes:
            head.append("notes")
        return head

    def cells(self, r: dict[str, Any]) -> list[str]:
        if r.get("n_accepted") is not None:
            steps = f"{r['steps']} ({r['n_accepted']}/{r['n_rejected']})"
        else:
            steps = f"{r['steps']}"
        cells = [
            r["problem"],
            r["impl"],
            _fmt(r.get("nfe"), "d"),
            steps,
            _fmt(r.get("func_us"), ".1f"),
            f"{_fmt(r.get('solve_ms'), '.1f')} / {_fmt(r.get('solve_ms_median'), '.1f')}",
            _fmt(r.get("loop_us_per_step"), ".1f"),
            _speedup(r.get("loop_speedup_vs_torchdiffeq"), ".1f"),
        ]
        if self.gpu:
            cells.append(_speedup(r.get("loop_speedup_vs_reference"), ".1f"))
        if self.whole_program:
            solve_key = "solve_speedup_vs_reference" if self.gpu else "solve_speedup_vs_torchdiffeq"
            cells += [_speedup(r.get(solve_key), ".1f"), _fmt(r.get("compile_s"), ".2f")]
        if self.ops:
            cells += [_fmt(r.get("solver_ops_per_step"), ".1f"), _fmt(r.get("host_reads_per_step"), ".2f")]
        on_cuda = str(r.get("device", "")).startswith("cuda")
        if self.cuda:
            cells.append(_fmt(r.get("cuda_syncs_per_step"), ".2f") if on_cuda else "n/a")
        if self.kernels:
            cells.append(_fmt(r.get("kernels_per_step"), ".1f") if on_cuda else "n/a")
        diff_key = "max_abs_diff_vs_reference" if self.gpu else "max_abs_diff_vs_torchdiffeq"
        cells.append(_fmt(r.get(diff_key), ".1e"))
        if self.notes:
            cells.append(_cell_notes(r.get("notes")))
        return cells


def format_table(results: Sequence[dict[str, Any]], *, kernels: bool | None = None) -> str:
    """Markdown table of ``run()`` results.  The op/host-read columns appear when counted, the
    kernels column for the GPU suite or CUDA rows (``kernels`` forces it on/off; 'n/a' on the
    CPU), the CUDA syncs column for CUDA rows, and a notes column when a row has notes."""
    columns = _SolveColumns.of(results, kernels)
    head = columns.head()
    lines = _header_lines(head, notes_column=columns.notes)
    for r in results:
        if "error" in r or "skipped" in r:
            text = (
                f"error: {r['error'][:80]}"
                if "error" in r
                else f"skipped: {r['skipped']}".replace("skipped: skipped:", "skipped:")
            )
            lines.append(f"| {r['problem']} | {r['impl']} | {text.replace('|', '/')} |" + " |" * (len(head) - 3))
            continue
        lines.append("| " + " | ".join(columns.cells(r)) + " |")
    return "\n".join(lines)


_ADJOINT_HEAD = [
    "problem",
    "impl",
    "fwd nfe",
    "bwd nfe",
    "bwd steps (acc/rej)",
    "VJP µs",
    "fwd ms",
    "bwd ms",
    "fwd+bwd ms (best / median)",
    "bwd loop µs/step",
    "fwd+bwd speedup vs torchdiffeq",
    "bwd loop speedup",
    "max rel \\|Δgrad\\| vs torchdiffeq",
]


def _adjoint_cells(r: dict[str, Any]) -> list[str]:
    if r.get("bwd_accepted") is not None and r.get("bwd_rejected") is not None:
        steps = f"{r['bwd_steps']} ({r['bwd_accepted']}/{r['bwd_rejected']})"
    else:
        steps = _fmt(r.get("bwd_steps"), "d")
    return [
        r["problem"],
        r["impl"],
        _fmt(r.get("fwd_nfe"), "d"),
        _fmt(r.get("bwd_nfe"), "d"),
        steps,
        _fmt(r.get("vjp_us"), ".1f"),
        _fmt(r.get("fwd_ms"), ".1f"),
        _fmt(r.get("bwd_ms"), ".1f"),
        f"{_fmt(r.get('fb_ms'), '.1f')} / {_fmt(r.get('fb_ms_median'), '.1f')}",
        _fmt(r.get("bwd_loop_us_per_step"), ".1f"),
        _speedup(r.get("fb_speedup_vs_torchdiffeq"), ".2f"),
        _speedup(r.get("bwd_loop_speedup_vs_torchdiffeq"), ".1f"),
        _fmt(r.get("max_rel_grad_diff_vs_torchdiffeq"), ".1e"),
    ]


_COMPILE_HEAD = [
    "problem",
    "impl",
    "first call s (cold / warm cache)",
    "compile s (cold / warm cache)",
    "one solve ms",
    "process s (cold / warm cache)",
]


def _cold_warm(r: dict[str, Any], key: str) -> str:
    return f"{_fmt(r.get('cold_' + key), '.2f')} / {_fmt(r.get('warm_' + key), '.2f')}"


def format_compile_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table of ``run_compile_times()`` results (first calls in fresh processes)."""
    head = _COMPILE_HEAD
    lines = _header_lines(head)
    for r in results:
        if "error" in r or "skipped" in r:
            text = f"error: {r['error'][:160]}" if "error" in r else f"skipped: {r['skipped']}"
            lines.append(f"| {r['problem']} | {r['impl']} | {text.replace('|', '/')} |" + " |" * (len(head) - 3))
            continue
        cells = [
            r["problem"],
            r["impl"],
            _cold_warm(r, "first_call_s"),
            _cold_warm(r, "compile_s"),
            _fmt(r.get("solve_ms"), ".2f"),
            _cold_warm(r, "process_s"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_adjoint_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table of ``run_adjoint()`` results."""
    head = _ADJOINT_HEAD
    lines = _header_lines(head)
    for r in results:
        if "error" in r:
            lines.append(f"| {r['problem']} | {r['impl']} | error: {r['error'][:80]} |" + " |" * (len(head) - 3))
            continue
        lines.append("| " + " | ".join(_adjoint_cells(r)) + " |")
    return "\n".join(lines)


# the suites whose tables are not solve tables: their formatter and footer
_OTHER_TABLES = {
    "adjoint": (format_adjoint_table, ADJOINT_TABLE_FOOTER),
    "compile": (format_compile_table, COMPILE_TABLE_FOOTER),
}


def print_tables(results: Sequence[dict[str, Any]], out: TextIO | None = None) -> None:
    """The tables of a run, one per suite (solve, gpu, adjoint, compile), each with its footer."""
    out = out or sys.stdout
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r.get("suite") or "solve", []).append(r)
    first = True
    for suite in ("solve", "gpu", "adjoint", "compile"):
        rows = groups.get(suite)
        if not rows:
            continue
        if not first:
            print(file=out)
        first = False
        if suite in _OTHER_TABLES:
            table, footer = _OTHER_TABLES[suite]
            print(table(rows), file=out)
            print("\n" + footer, file=out)
            continue
        print(format_table(rows), file=out)
        print("\n" + TABLE_FOOTER, file=out)
        if any(r.get("first_call_s") is not None for r in rows):
            print(TABLE_FOOTER_WHOLE_PROGRAM, file=out)
        if any(str(r.get("device", "")).startswith("cuda") for r in rows):
            print(TABLE_FOOTER_CUDA, file=out)


def environment(device, dtype: torch.dtype, grad: bool) -> dict[str, Any]:
    """Where the numbers were taken: date, Python, platform, torch and its threads, the peers'
    versions (None when not installed) and ``odecore.backend_info()``."""
    env = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        python=platform.python_version(),
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        device=str(device),
        dtype=dtype_name(dtype),
        grad=grad,
        odecore=getattr(odecore, "__version__", "installed") if hasattr(odecore, "odeint") else None,
    )
    for peer in ("torchdiffeq", "torchode", "jax", "diffrax"):
        try:
            env[peer] = getattr(importlib.import_module(peer), "__version__", "installed")
        except Exception:
            env[peer] = None
    try:
        env["odecore_backend_info"] = {
            k: (v if isinstance(v, (bool, int, float, str, type(None))) else str(v))
            for k, v in odecore.backend_info().items()
        }
    except Exception:
        pass
    return env
