"""Package surface: SOLVERS, backend_info, operator schemas, and the fallback
to the reference path when the compiled extension cannot be imported."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

import odecore

from .testing import ADAPTIVE_METHODS, ALL_METHODS, EXPLICIT_RK_METHODS, FIXED_METHODS, METHOD_KINDS, ORDERS

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- #
# SOLVERS
# --------------------------------------------------------------------------- #


def test_solver_registry():
    assert isinstance(odecore.SOLVERS, dict)
    assert set(EXPLICIT_RK_METHODS) <= set(odecore.SOLVERS), set(EXPLICIT_RK_METHODS) - set(odecore.SOLVERS)
    assert set(ADAPTIVE_METHODS) | set(FIXED_METHODS) == set(EXPLICIT_RK_METHODS)


def test_every_method_is_of_exactly_one_kind():
    """The method lists the tests parametrise over come from the registry by solver class:
    a new solver must land in exactly one of them."""
    assert ALL_METHODS == list(odecore.SOLVERS)
    for name in ALL_METHODS:
        kinds = [kind for kind, methods in METHOD_KINDS.items() if name in methods]
        assert len(kinds) == 1, (name, kinds)


@pytest.mark.parametrize("method", EXPLICIT_RK_METHODS)
def test_order_attribute(method):
    cls = odecore.SOLVERS[method]
    assert isinstance(cls, type)
    assert isinstance(cls.order, int) and not isinstance(cls.order, bool)
    assert cls.order == ORDERS[method]


def test_public_names():
    for name in ("odeint", "SOLVERS", "backend_info", "set_backend", "get_backend"):
        assert hasattr(odecore, name), name
    assert callable(odecore.odeint)


# --------------------------------------------------------------------------- #
# backend_info
# --------------------------------------------------------------------------- #


def test_backend_info():
    info = odecore.backend_info()
    assert isinstance(info, dict)
    for key in ("cpu", "cuda", "torch_version", "cuda_version"):
        assert key in info, key
    assert isinstance(info["cpu"], bool)
    assert isinstance(info["cuda"], bool)
    assert info["cuda_version"] is None or isinstance(info["cuda_version"], str)
    if info["cuda"]:
        assert torch.cuda.is_available()
        assert isinstance(info["cuda_version"], str)
    if info["cpu"]:
        # the extension was built against the torch that is running
        assert isinstance(info["torch_version"], str)
        assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    # a fresh dict each call (callers may mutate it)
    info["cpu"] = "mutated"
    assert odecore.backend_info()["cpu"] != "mutated"


def test_get_backend_default():
    assert odecore.get_backend() in ("fused", "reference")


OP_SCHEMAS = {
    "rk_stage": ([("y0", "Tensor"), ("k", "Tensor[]"), ("a", "float[]"), ("dt", "float")], 1),
    "rk_finish": (
        [
            ("y0", "Tensor"),
            ("k", "Tensor[]"),
            ("b", "float[]"),
            ("e", "float[]"),
            ("dt", "float"),
            ("rtol", "Tensor"),
            ("atol", "Tensor"),
            ("segments", "int[]"),
        ],
        2,
    ),
    "rk_error_ratio": (
        [
            ("y0", "Tensor"),
            ("y1", "Tensor"),
            ("k", "Tensor[]"),
            ("e", "float[]"),
            ("dt", "float"),
            ("rtol", "Tensor"),
            ("atol", "Tensor"),
            ("segments", "int[]"),
        ],
        1,
    ),
    "rk_interp": ([("y0", "Tensor"), ("k", "Tensor[]"), ("poly", "float[]"), ("dt", "float"), ("x", "float[]")], 1),
}


@pytest.mark.parametrize("name", sorted(OP_SCHEMAS))
@pytest.mark.fused
def test_operator_schema(name):
    schema = getattr(torch.ops.odecore, name).default._schema
    args = [
        (
            a.name,
            str(a.type)
            .replace("List[float]", "float[]")
            .replace("List[int]", "int[]")
            .replace("List[Tensor]", "Tensor[]"),
        )
        for a in schema.arguments
    ]
    expected_args, n_returns = OP_SCHEMAS[name]
    assert args == expected_args, str(schema)
    assert len(schema.returns) == n_returns, str(schema)
    assert not schema.is_mutable, str(schema)


# --------------------------------------------------------------------------- #
# Fallback when odecore._C cannot be imported
# --------------------------------------------------------------------------- #

FALLBACK_SCRIPT = textwrap.dedent(r"""
    import importlib.abc
    import json
    import math
    import sys
    import warnings

    class BlockExtension(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == 'odecore._C':
                raise ImportError('odecore._C blocked by the test-suite')
            return None

    sys.meta_path.insert(0, BlockExtension())
    warnings.simplefilter('always')   # de-duplication must be odecore's own doing

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        import torch
        import odecore
        import odecore.ops
        info = odecore.backend_info()
        y0 = torch.ones(2, dtype=torch.float64)
        t = torch.tensor([0.0, 1.0], dtype=torch.float64)
        results = []
        for method in ('dopri5', 'rk4'):
            for backend in (None, 'fused', 'reference'):
                opts = {} if backend is None else {'backend': backend}
                if method == 'rk4':
                    opts['step_size'] = 0.01
                out = odecore.odeint(lambda t, y: -y, y0, t, rtol=1e-8, atol=1e-8, method=method, options=opts)
                results.append(abs(out[-1, 0].item() - math.exp(-1)))
        # gradients still work
        y0g = y0.clone().requires_grad_()
        odecore.odeint(lambda t, y: -y, y0g, t, options={'backend': 'fused'})[-1].sum().backward()
        grad_ok = abs(y0g.grad[0].item() - math.exp(-1)) < 1e-5
        ops = odecore.ops.get_ops('reference')
        stage = ops.rk_stage(y0, [y0], [0.5], 2.0)
        has_op = hasattr(torch.ops.odecore, 'rk_stage')

    user_warnings = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    print(json.dumps(dict(
        cpu=info['cpu'], cuda=info['cuda'], errors=results, grad_ok=grad_ok,
        stage=stage.tolist(), has_op=has_op, warnings=user_warnings,
        extension_module=str(sys.modules.get('odecore._C')),
    )))
""")


def test_fallback_without_extension():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("ODECORE_REQUIRE_EXTENSION", None)
    proc = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT],
        cwd=str(REPO_ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["cpu"] is False and res["cuda"] is False
    assert not res["has_op"]
    assert max(res["errors"]) < 1e-5, res["errors"]
    assert res["grad_ok"]
    assert res["stage"] == [2.0, 2.0]
    fallback = [w for w in res["warnings"] if "reference" in w.lower()]
    assert len(fallback) == 1, res["warnings"]
    # no other noise either
    assert len(res["warnings"]) == 1, res["warnings"]
