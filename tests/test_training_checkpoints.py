"""Training checkpoint files (issue #9): what tests/test_cli.py does not cover yet.

Checkpoints are written atomically (a temporary file, flushed, then renamed) and read with
``torch.load(weights_only=True)``. A corrupted, truncated, foreign or malicious file gives a
clear command-line error (argparse's exit status 2, a message naming the file) -- never a
crash, a traceback, or code execution. ``odecore train sdenet`` writes no checkpoint (it has
no --resume), so only ``odecore train`` (odenet, rknet, resnet) is concerned.
"""

import os
import pickle

import pytest
import torch

from odecore.__main__ import main
from odecore.apps import checkpoints, train

ARGS = ["--epochs", "1", "--limit", "32", "--batch-size", "32", "--method", "euler"]


def checkpoint_state(model_name="odenet"):
    """A real checkpoint's contents, as `odecore train` writes them (no training needed)."""
    model = train.build_model(model_name, 1, 10, "euler")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1)
    return dict(
        format="odecore-train-1",
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        epoch=1,
        history=[],
        args={"model": model_name},
        rng=torch.Generator().manual_seed(0).get_state(),
    )


def resume(out, capsys, model="odenet"):
    """`odecore train <model> --resume` on the folder `out`: returns its error message."""
    with pytest.raises(SystemExit) as info:
        main(["train", model, "--out", str(out), "--resume"] + ARGS)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "checkpoint" in err and str(out) in err, err
    return err


class _WritesMarker:
    """Unpickling this would create the file `path` (as any pickled callable could run code)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_random_bytes_give_a_clear_error(tmp_path, capsys):
    for content in (os.urandom(4096), b"", b"PK\x03\x04" + os.urandom(200), b"\x80\x02}q\x00."):
        (tmp_path / "checkpoint.pt").write_bytes(content)
        assert "corrupted" in resume(tmp_path, capsys) or "not an odecore" in resume(tmp_path, capsys)


def test_truncated_checkpoint_gives_a_clear_error(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    checkpoints.save_checkpoint(str(path), checkpoint_state())
    whole = path.read_bytes()
    for size in (len(whole) // 2, len(whole) - 1, 100, 1):
        path.write_bytes(whole[:size])
        assert "corrupted" in resume(tmp_path, capsys)


@pytest.mark.parametrize("container", ["torch_zip", "raw_pickle"])
def test_pickle_that_would_run_code_is_refused(tmp_path, capsys, container):
    marker = tmp_path / "code_was_executed"
    path = tmp_path / "checkpoint.pt"
    state = checkpoint_state()
    state["history"] = [_WritesMarker(str(marker))]
    if container == "torch_zip":
        torch.save(state, str(path))
    else:
        with open(path, "wb") as handle:
            pickle.dump(state, handle, protocol=2)
    err = resume(tmp_path, capsys)
    assert "corrupted" in err
    assert not marker.exists(), "loading the checkpoint executed code"
    with pytest.raises(ValueError, match="corrupted"):
        checkpoints.load_checkpoint(str(path))
    assert not marker.exists()


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path, capsys):
    checkpoints.save_checkpoint(str(tmp_path / "checkpoint.pt"), checkpoint_state("resnet"))
    err = resume(tmp_path, capsys, model="odenet")
    assert "does not match" in err


@pytest.mark.parametrize("key,value", [("epoch", "1"), ("epoch", -1), ("history", {}), ("model", []), ("rng", [0])])
def test_checkpoint_with_wrong_types_is_a_clear_error(tmp_path, capsys, key, value):
    state = checkpoint_state()
    state[key] = value
    checkpoints.save_checkpoint(str(tmp_path / "checkpoint.pt"), state)
    assert "corrupted" in resume(tmp_path, capsys)


def test_directory_in_place_of_the_checkpoint(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").mkdir()
    assert "corrupted" in resume(tmp_path, capsys)


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A save killed half-way (here: KeyboardInterrupt inside torch.save) leaves the previous
    checkpoint as it was and no temporary file behind."""
    path = str(tmp_path / "checkpoint.pt")
    checkpoints.save_checkpoint(path, checkpoint_state())
    before = open(path, "rb").read()
    real_save = torch.save

    def save_half_then_die(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(37)  # a partial file, as a kill mid-write leaves it
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_half_then_die)
    state = checkpoint_state()
    state["epoch"] = 2
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(path, state)
    monkeypatch.setattr(torch, "save", real_save)
    assert open(path, "rb").read() == before
    assert os.listdir(str(tmp_path)) == ["checkpoint.pt"]
    assert checkpoints.load_checkpoint(path)["epoch"] == 1


def test_unwritable_output_folder_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        main(["train", "odenet", "--out", str(blocker / "run")] + ARGS)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err
