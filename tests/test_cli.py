"""The command line and its files: training on digits and on MNIST IDX files, atomic
checkpoints and resume, corrupted checkpoints, Table 1 and the demos."""

import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from odecore.__main__ import main
from odecore.apps import checkpoints, data, train


def write_idx(path, array, compress=False):
    codes = {np.dtype(np.uint8): 0x08}
    header = struct.pack(">HBB", 0, codes[array.dtype], array.ndim) + struct.pack(">%dI" % array.ndim, *array.shape)
    payload = header + array.tobytes()
    with (gzip.open if compress else open)(path, "wb") as handle:
        handle.write(payload)


@pytest.fixture
def mnist_dir(tmp_path):
    rng = np.random.RandomState(0)
    for (images, labels), n, compress in ((data.MNIST_FILES["train"], 40, True), (data.MNIST_FILES["test"], 20, False)):
        suffix = ".gz" if compress else ""
        write_idx(str(tmp_path / (images + suffix)), rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8), compress)
        write_idx(str(tmp_path / (labels + suffix)), (np.arange(n) % 10).astype(np.uint8), compress)
    return tmp_path


def test_read_idx_plain_and_gz(mnist_dir):
    (x_train, y_train), (x_test, y_test) = data.load_mnist(str(mnist_dir))
    assert x_train.shape == (40, 1, 28, 28) and x_test.shape == (20, 1, 28, 28)
    assert y_train.tolist() == [i % 10 for i in range(40)]
    assert x_train.dtype == torch.float32


def test_read_idx_rejects_truncated_and_garbage(tmp_path):
    path = str(tmp_path / "bad")
    write_idx(path, np.zeros((3, 4, 4), dtype=np.uint8))
    with open(path, "rb") as handle:
        content = handle.read()
    with open(path, "wb") as handle:
        handle.write(content[:-5])
    with pytest.raises(ValueError, match="payload"):
        data.read_idx(path)
    with open(path, "wb") as handle:
        handle.write(b"not an idx file at all")
    with pytest.raises(ValueError, match="IDX"):
        data.read_idx(path)


def test_missing_mnist_never_downloads(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        data.load_mnist(str(tmp_path))


def test_digits_split_is_fixed_and_stratified():
    (a, b), (c, d) = data.load_digits()
    (a2, _), (c2, _) = data.load_digits()
    assert torch.equal(a, a2) and torch.equal(c, c2)
    assert len(a) + len(c) == 1797
    counts = torch.bincount(d, minlength=10)
    assert counts.min() >= 30 and counts.max() <= 40


def test_train_writes_checkpoint_metrics_plots_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "resnet", "--epochs", "1", "--limit", "200", "--out", out]) == 0
    for name in ("checkpoint.pt", "metrics.json", "acc.png", "loss.png", "nfe.png"):
        assert os.path.exists(os.path.join(out, name)), name
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    state = checkpoints.load_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert state["epoch"] == 1
    assert main(["train", "resnet", "--epochs", "2", "--limit", "200", "--out", out, "--resume"]) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert "resumed from" in capsys.readouterr().out


def test_train_odenet_counts_nfe(tmp_path):
    out = str(tmp_path / "ode")
    assert main(["train", "odenet", "--epochs", "1", "--limit", "64", "--batch-size", "32", "--out", out]) == 0
    history = json.load(open(os.path.join(out, "metrics.json")))["history"]
    assert history[0]["forward_nfe"] > 0 and history[0]["backward_nfe"] > 0


def test_train_on_mnist_idx(mnist_dir, tmp_path):
    out = str(tmp_path / "mnist")
    assert (
        main(["train", "resnet", "--data", "mnist", "--data-dir", str(mnist_dir), "--epochs", "1", "--out", out]) == 0
    )
    assert json.load(open(os.path.join(out, "metrics.json")))["data"] == "mnist"


def test_corrupted_checkpoint_gives_clear_error(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    with open(path, "wb") as handle:
        handle.write(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="corrupted"):
        checkpoints.load_checkpoint(path)
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="not an odecore"):
        checkpoints.load_checkpoint(path)


def test_bad_arguments_exit_with_usage(tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "vgg"])
    with pytest.raises(SystemExit):
        main(["train", "resnet", "--epochs", "0", "--out", str(tmp_path)])


def test_table1_reports_memory(tmp_path):
    out = str(tmp_path / "t1")
    assert main(["table1", "--epochs", "1", "--limit", "64", "--batch-size", "32", "--out", out]) == 0
    rows = {r["model"]: r for r in json.load(open(os.path.join(out, "table1.json")))["rows"]}
    assert set(rows) == {"resnet", "rknet", "odenet"}
    assert os.path.exists(os.path.join(out, "table1.md"))
    # the adjoint saves the same whatever the step count; backprop through the solver grows with it
    assert rows["odenet"]["forward_nfe_tight"] > rows["odenet"]["forward_nfe_at_tol"]
    assert rows["odenet"]["backward_memory_bytes_tight"] == rows["odenet"]["backward_memory_bytes"]
    assert rows["rknet"]["backward_memory_bytes_tight"] > rows["rknet"]["backward_memory_bytes"]
    assert rows["resnet"]["parameters"] > rows["odenet"]["parameters"]


@pytest.mark.parametrize(
    "demo,extra", [("spiral", ["--iterations", "3"]), ("latent", ["--iterations", "2", "--nspiral", "16"])]
)
def test_demos_write_png(demo, extra, tmp_path):
    assert main(["demo", demo, "--out", str(tmp_path)] + extra) == 0
    assert os.path.getsize(os.path.join(str(tmp_path), demo + ".png")) > 1000


def test_console_entry_point_info():
    out = subprocess.run(
        [sys.executable, "-m", "odecore", "info", "--json"], capture_output=True, text=True, check=True
    )
    assert "cpu" in json.loads(out.stdout)


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, monkeypatch):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    common = ["--epochs", "2", "--limit", "96", "--batch-size", "32", "--seed", "3"]
    assert main(["train", "odenet", "--out", straight] + common) == 0
    save = checkpoints.save_checkpoint

    def save_then_die(path, state):  # the run is killed right after its first checkpoint
        save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(["train", "odenet", "--out", resumed] + common)
    monkeypatch.setattr(checkpoints, "save_checkpoint", save)
    assert main(["train", "odenet", "--out", resumed, "--resume"] + common) == 0
    a = checkpoints.load_checkpoint(os.path.join(straight, "checkpoint.pt"))
    b = checkpoints.load_checkpoint(os.path.join(resumed, "checkpoint.pt"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["history"][-1]["test_acc"] == b["history"][-1]["test_acc"]


def test_missing_data_folder_and_corrupt_idx_are_clear_cli_errors(tmp_path, capsys, mnist_dir):
    with pytest.raises(SystemExit):
        main(["train", "resnet", "--data", "mnist", "--out", str(tmp_path / "a")])
    assert "--data-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            [
                "train",
                "resnet",
                "--data",
                "mnist",
                "--data-dir",
                str(tmp_path / "nowhere"),
                "--out",
                str(tmp_path / "b"),
            ]
        )
    assert "not found" in capsys.readouterr().err
    images = os.path.join(str(mnist_dir), data.MNIST_FILES["test"][0])
    with open(images, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(SystemExit):
        main(["train", "resnet", "--data", "mnist", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "c")])
    assert "IDX" in capsys.readouterr().err


def _distributed_worker(rank, world, init_file, gradient, out_path, x, y):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = train.build_model("odenet", 1, 10, method="rk4", gradient=gradient)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    train.backward_step(ddp, x, y, rank, world)
    if rank == 0:
        torch.save({name: p.grad for name, p in model.named_parameters()}, out_path)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("gradient", ["adjoint", "direct"])
def test_distributed_gradients_equal_single_process(gradient, tmp_path):
    (x, y), _ = data.load_digits()
    x, y = x[:12], y[:12]  # one global batch, split 6 + 6
    out = str(tmp_path / "grads.pt")
    torch.multiprocessing.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), gradient, out, x, y), nprocs=2)
    torch.manual_seed(0)
    # a fixed grid (one rk4 step over [0, 1]): adaptive steps would depend on the batch
    # they are chosen for, so a shard would take other steps than the whole batch
    model = train.build_model("odenet", 1, 10, method="rk4", gradient=gradient)
    train.backward_step(model, x, y)
    distributed = torch.load(out, weights_only=True)
    for name, p in model.named_parameters():
        torch.testing.assert_close(distributed[name], p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_train_command_under_torchrun(tmp_path):
    out = str(tmp_path / "ddp")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "odecore",
        "train",
        "resnet",
        "--epochs",
        "1",
        "--limit",
        "64",
        "--batch-size",
        "32",
        "--out",
        out,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.load(open(os.path.join(out, "metrics.json")))["world_size"] == 2


@pytest.mark.slow
def test_demo_vdp_and_bench_commands(tmp_path, capsys):
    assert main(["demo", "vdp", "--batch", "4"]) == 0
    assert "dopri5" in capsys.readouterr().out
    out = str(tmp_path / "bench.json")
    assert (
        main(
            [
                "bench",
                "--problems",
                "vdp",
                "--impls",
                "odecore-fused,odecore-reference",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "-q",
                "--json",
                out,
            ]
        )
        == 0
    )
    results = json.load(open(out))
    assert "odecore-fused" in json.dumps(results)


@pytest.mark.slow
def test_train_sdenet_writes_the_ood_table(tmp_path):
    out = str(tmp_path / "sdenet")
    assert (
        main(
            [
                "train",
                "sdenet",
                "--epochs",
                "1",
                "--limit",
                "200",
                "--dim",
                "16",
                "--passes",
                "2",
                "--test-sigma-max",
                "0.5",
                "--out",
                out,
            ]
        )
        == 0
    )
    summary = json.load(open(os.path.join(out, "ood.json")))
    for model in ("sdenet", "resnet"):
        for ood in ("photo_patches", "gaussian_noise", "heldout_classes"):
            assert set(summary[model][ood]) == {"tnr_at_tpr95", "auroc", "detection_accuracy", "aupr_in", "aupr_out"}
    assert os.path.exists(os.path.join(out, "ood.md")) and os.path.getsize(os.path.join(out, "confidence.png")) > 1000


def test_photo_patches_are_offline_grey_patches():
    patches = data.photo_patches(10, seed=1)
    assert patches.shape == (10, 1, 8, 8) and float(patches.min()) >= 0 and float(patches.max()) <= 1
    assert torch.equal(patches, data.photo_patches(10, seed=1))
