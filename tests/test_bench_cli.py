"""`odecore bench`: the op / host-read counter, the GPU suite at CPU sizes, budgets, JSON."""

import json
import sys

import pytest
import torch
from torch import nn

from odecore import bench


def _installed(name):
    return bench.IMPLEMENTATIONS[name].available()


def test_op_counter_counts_a_known_number_of_ops():
    y = torch.randn(5)

    def func(t, y):  # exactly two ATen ops: aten.mul.Tensor, aten.add.Tensor
        return y * 2.0 + 1.0

    with bench.OpCounter() as c:
        for _ in range(7):
            with c.in_func():
                func(None, y)
        y.neg()  # one op outside the function: the "solver" bucket
    assert dict(c.ops["func"]) == {"aten.mul.Tensor": 7, "aten.add.Tensor": 7}
    assert c.n_ops("func") == 14
    assert dict(c.ops["solver"]) == {"aten.neg.default": 1}
    assert c.host_reads == {"solver": 0, "func": 0}


def test_op_counter_counts_host_reads_and_restores_tolist():
    x = torch.arange(4.0)
    with bench.OpCounter() as c:
        x.sum().item()  # _local_scalar_dense
        float(x[0])  # _local_scalar_dense
        bool(x[1] > 0)  # _local_scalar_dense
        x.tolist()  # dispatches nothing on the CPU: counted by the patched Tensor.tolist
        torch.nonzero(x)  # output size depends on the data
        with c.in_func():
            x[2].item()
    assert c.host_reads == {"solver": 5, "func": 1}
    assert c.host_read_ops["solver"]["aten._local_scalar_dense.default"] == 3
    assert c.host_read_ops["solver"]["Tensor.tolist"] == 1
    assert "tolist" not in torch.Tensor.__dict__  # patched only while counting
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0]


class _Neg(nn.Module):
    def forward(self, t, y):
        return -y  # one aten.neg per evaluation


@pytest.mark.parametrize("impl_name", ["odecore-fused", "odecore-reference", "torchdiffeq"])
def test_count_solve_separates_func_ops_from_solver_ops(impl_name):
    if not _installed(impl_name):
        pytest.skip(f"{impl_name} not installed")
    inst = bench.Instance(
        "neg",
        _Neg(),
        torch.ones(4, 2, dtype=torch.float64),
        torch.linspace(0.0, 1.0, 5, dtype=torch.float64),
        "dopri5",
        1e-6,
        1e-6,
    )
    c = bench.count_solve(bench.IMPLEMENTATIONS[impl_name], inst)
    assert c["nfe"] > 0 and c["steps"] > 0
    assert c["func_ops"] == c["nfe"] and c["func_ops_per_eval"] == 1.0
    assert c["func_host_reads"] == 0
    assert c["solver_ops"] > 0 and c["solver_ops_per_step"] == c["solver_ops"] / c["steps"]
    assert c["host_reads"] >= 1 and c["host_reads_per_step"] == c["host_reads"] / c["steps"]
    if impl_name == "odecore-fused" and bench.IMPLEMENTATIONS[impl_name].available():
        from odecore._extension import has_fused

        if has_fused(torch.device("cpu")):
            assert c["custom_ops_per_step"] > 0
            assert any(k.startswith("odecore.") for k in c["top_solver_ops"])


def test_count_kernels_runs_on_the_cpu():
    kc = bench.count_kernels(lambda: torch.ones(3) * 2, "cpu")
    assert kc["cpu_ops"] >= 1 and kc["kernels"] == 0


def test_gpu_suite_sizes_are_small_unless_asked():
    small = bench.gpu_problems(device="cpu")
    assert max(p.size for p in small) <= 256
    assert bench.gpu_problems(sizes="auto", device="cpu") == small
    full = {p.name for p in bench.gpu_problems(sizes="full")}
    assert {
        "gpu_vdp_256",
        "gpu_vdp_4096",
        "gpu_vdp_65536",
        "lorenz_rk4_1024",
        "lorenz_rk4_16384",
        "lorenz_rk4_1048576",
        "lorenz_tsit5_1048576",
        "odenet_block_128",
    } <= full
    assert [p.name for p in bench.gpu_problems(["lorenz_rk4_16", "gpu_vdp"], sizes="8")] == [
        "lorenz_rk4_16",
        "gpu_vdp_8",
    ]
    with pytest.raises(ValueError):
        bench.gpu_problems(["nope"])
    inst = bench.gpu_problems(["lorenz_rk4_8"])[0].make()
    assert inst.y0.shape == (8, 3) and torch.equal(inst.y0[:, 0], torch.ones(8, dtype=torch.float64))
    assert float(inst.func.rho[-1]) == 21.0 and inst.options == {"step_size": 1e-3}
    assert bench.gpu_problems(["odenet_block_2"])[0].make().y0.shape == (2, 64, 6, 6)


_COLUMNS = (
    "nfe",
    "steps",
    "solve_ms",
    "func_us",
    "loop_us_per_step",
    "loop_speedup_vs_reference",
    "loop_speedup_vs_torchdiffeq",
    "max_abs_diff_vs_reference",
    "solver_ops_per_step",
    "func_ops_per_eval",
    "host_reads_per_step",
    "kernels_per_step",
    "notes",
    "family",
    "size",
)


@pytest.mark.slow
def test_gpu_suite_on_the_cpu_writes_every_column(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    problems = ["gpu_vdp_16", "lorenz_rk4_16", "lorenz_tsit5_16", "odenet_block_2"]
    assert (
        bench.main(
            [
                "--suite",
                "gpu",
                "--sizes",
                "small",
                "--problems",
                *problems,
                "--repeats",
                "1",
                "--warmup",
                "0",
                "-q",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    for head in ("solver ops/step", "host reads/step", "kernels/step", "loop speedup vs reference"):
        assert head in table
    data = json.loads(out.read_text())
    assert data["partial"] is False and data["suite"] == "gpu"
    rows = data["results"]
    timed = [r for r in rows if "skipped" not in r and "error" not in r]
    assert not [r for r in rows if "error" in r]
    assert {(r["problem"], r["impl"]) for r in timed} >= {
        (p, i) for p in problems for i in ("odecore-fused", "odecore-reference")
    }
    for r in timed:
        assert r["suite"] == "gpu"
        missing = [c for c in _COLUMNS if c not in r]
        assert not missing, (r["problem"], r["impl"], missing)
        assert r["kernels_per_step"] is None  # CPU: n/a
        assert r["solver_ops_per_step"] > 0 and r["host_reads_per_step"] is not None
    rk4 = {r["impl"]: r for r in timed if r["problem"] == "lorenz_rk4_16"}
    assert rk4["odecore-fused"]["steps"] == 1000 and rk4["odecore-fused"]["nfe"] == 4000
    if _installed("torchdiffeq"):
        skipped = {(r["problem"], r["impl"]): r["skipped"] for r in rows if "skipped" in r}
        assert "no tsit5" in skipped[("lorenz_tsit5_16", "torchdiffeq")]
        assert rk4["torchdiffeq"]["steps"] == 1000
        assert rk4["odecore-fused"]["host_reads_per_step"] < rk4["torchdiffeq"]["host_reads_per_step"]
    assert bench.main(["--from-json", str(out)]) == 0
    assert "lorenz_tsit5_16" in capsys.readouterr().out


def test_case_budget_skips_the_case_and_the_larger_sizes():
    results = bench.run(
        bench.gpu_problems(["lorenz_rk4"], sizes="16,32"),
        ["odecore-reference"],
        repeats=1,
        warmup=0,
        case_budget_s=0.01,
        suite="gpu",
    )
    assert [r["problem"] for r in results] == ["lorenz_rk4_16", "lorenz_rk4_32"]
    assert "one solve > 0.01 s" in results[0]["skipped"]
    assert "at lorenz_rk4_16" in results[1]["skipped"]
    assert "skipped: one solve" in bench.format_table(results)


def test_batch_override_and_sync_every_pass_through(tmp_path):
    out = tmp_path / "b.json"
    assert (
        bench.main(
            [
                "--problems",
                "vdp",
                "--batch",
                "8",
                "--impls",
                "odecore-fused",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "-q",
                "--sync-every",
                "4",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    (row,) = json.loads(out.read_text())["results"]
    assert row["batch"] == 8 and row["solver_ops_per_step"] > 0
    # either this odecore takes the option (and the row says so) or the row notes it was ignored
    assert row.get("sync_every") == 4 or any("sync_every ignored" in n for n in row["notes"])


# --------------------------------------------------------------------------- #
# The whole-program implementations: odecore-compiled and diffrax
# --------------------------------------------------------------------------- #


def test_the_whole_program_adapters_are_listed(capsys):
    assert bench.main(["--list"]) == 0
    listing = capsys.readouterr().out
    lines = {line.split()[0]: line for line in listing.splitlines() if line.strip()}
    assert "available" in lines["odecore-compiled"]
    assert lines["diffrax"].split(None, 1)[1] in ("available", "not installed")
    assert bench.whole_program_implementations() == ["odecore-compiled", "diffrax"]
    # they compile for seconds on every problem: a run without --impls leaves them out
    assert not set(bench.whole_program_implementations()) & set(bench.default_implementations())


@pytest.mark.slow
def test_a_tiny_compiled_case_runs_and_records_its_compile_time():
    results = bench.run(["vdp"], ["odecore-reference", "odecore-compiled"], batch=2, repeats=1, warmup=0)
    rows = {r["impl"]: r for r in results}
    compiled, reference = rows["odecore-compiled"], rows["odecore-reference"]
    assert "error" not in compiled, compiled.get("error")
    assert compiled["loop"] == "compiled" and compiled["compiles"] == 1 and compiled["host_reads"] == 1
    assert (compiled["steps"], compiled["n_accepted"]) == (reference["steps"], reference["n_accepted"])
    assert compiled["max_abs_diff_vs_reference"] < 1e-10
    assert compiled["first_call_s"] > compiled["solve_ms"] / 1e3 and compiled["compile_s"] is not None
    assert compiled["loop_us_per_step"] is None and compiled.get("solver_ops_per_step") is None
    table = bench.format_table(results)
    assert "compile s" in table and "solve speedup vs torchdiffeq" in table


def test_a_compiled_solve_that_cannot_compile_is_an_error_row():
    # gradients through the compiled loop are refused: 'strict' makes that an error, not a fallback
    (row,) = bench.run(["vdp"], ["odecore-compiled"], batch=2, repeats=1, warmup=0, grad=True)
    assert "cannot be compiled" in row["error"]


def test_without_jax_the_diffrax_row_is_left_out(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jax", None)  # `import jax` now raises ImportError
    monkeypatch.setitem(sys.modules, "diffrax", None)
    assert not bench.IMPLEMENTATIONS["diffrax"].available()
    args = ["--problems", "vdp", "--batch", "2", "--impls", "odecore-reference", "diffrax", "--repeats", "1", "-q"]
    assert bench.main(args) == 0
    table = capsys.readouterr().out
    assert "| vdp | odecore-reference |" in table and "diffrax" not in table


def _diffrax_installed():
    if not _installed("diffrax"):
        pytest.skip("jax / diffrax not installed")


@pytest.mark.parametrize("problem", ["vdp", "spiral", "small_node", "mlp"])
def test_diffrax_solves_the_same_problem(problem):
    _diffrax_installed()
    results = bench.run([problem], ["odecore-reference", "diffrax"], batch=2, repeats=1, warmup=0)
    rows = {r["impl"]: r for r in results}
    row, reference = rows["diffrax"], rows["odecore-reference"]
    assert "error" not in row, row.get("error")
    assert row["n_accepted"] + row["n_rejected"] == row["steps"] and row["nfe"] is None
    assert row["first_call_s"] is not None and row["loop_us_per_step"] is None
    # another step control, the same solution within the tolerances' reach
    assert row["max_abs_diff_vs_reference"] < 1e-2
    if row["steps"] != reference["steps"]:
        assert any("PIDController" in n for n in row["notes"])


def test_diffrax_runs_float32_in_float32():
    _diffrax_installed()
    impl = bench.IMPLEMENTATIONS["diffrax"]
    inst = bench.get_problem("small_node").make("cpu", torch.float32, batch=2)
    counts = impl.count(inst, bench.prepare_y0(inst, False))
    assert counts["solution"].dtype == torch.float32 and counts["steps"] > 0
    assert not impl.applicable(bench.get_problem("mlp_rk4").make("cpu", batch=2))


def test_compile_times_share_one_cache_per_case(monkeypatch):
    seen = []

    def fake_child(spec, cache_dir, timeout_s=None):
        seen.append((spec["problem"], spec["impl"], cache_dir))
        return dict(first_call_s=2.0 if len(seen) % 2 else 1.0, solve_s=0.001, compile_s=1.999, process_s=3.0)

    monkeypatch.setattr(bench.compile_times, "fresh_process_first_call", fake_child)
    rows = bench.run_compile_times(["vdp", "mlp_rk4"], ["odecore-compiled"], batch=2)
    assert [(r["problem"], r["cold_first_call_s"], r["warm_first_call_s"]) for r in rows] == [
        ("vdp", 2.0, 1.0),
        ("mlp_rk4", 2.0, 1.0),
    ]
    # the cold and the warm process of a case share one cache directory, a new one per case
    assert seen[0][2] == seen[1][2] and seen[2][2] == seen[3][2] and seen[0][2] != seen[2][2]
    assert "first call s (cold / warm cache)" in bench.format_compile_table(rows)


def test_compile_times_refuse_what_they_cannot_measure(capsys):
    assert bench.main(["--compile-times", "--suite", "gpu"]) == 2
    assert bench.main(["--compile-times", "--impls", "torchdiffeq"]) == 2
    assert bench.main(["--compile-times", "--problems", "adjoint_spiral"]) == 2
    assert "--compile-times" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_times_in_fresh_processes():
    _diffrax_installed()  # the quicker compile of the two; the machinery is the same
    (row,) = bench.run_compile_times(["vdp"], ["diffrax"], batch=2, threads=1)
    assert "error" not in row, row.get("error")
    for key in ("first_call_s", "compile_s", "process_s"):
        assert row[f"cold_{key}"] > 0 and row[f"warm_{key}"] > 0
    assert row["solve_ms"] > 0
