"""Training checkpoints of `odecore train` (the run's files, not the library's gradient
checkpointing in `odecore.checkpoint`): written atomically, read without running code, checked
before use, and restored into a run with clear errors."""

import argparse
import os

import torch

FORMAT = "odecore-train-1"
CHECKPOINT_KEYS = {"format", "model", "optimizer", "scheduler", "epoch", "history", "args", "rng"}


def plain_arguments(args: argparse.Namespace) -> dict:
    """The run's arguments that are plain values (what a checkpoint and a JSON file can hold)."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) or v is None}


def training_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    history: list,
    args: argparse.Namespace,
    generator: torch.Generator,
) -> dict:
    """What a checkpoint holds after `epoch` epochs: everything a resumed run needs to take
    the same steps as an uninterrupted one."""
    return dict(
        format=FORMAT,
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        epoch=epoch,
        history=history,
        args=plain_arguments(args),
        rng=generator.get_state(),
    )


def save_checkpoint(path: str, state: dict) -> None:
    """Writes atomically: a temporary file in the same folder, flushed to disk, then a rename
    (a run killed mid-write leaves the previous checkpoint; an exception removes the
    temporary file)."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def load_checkpoint(path: str) -> dict:
    """Loads with weights_only=True (no code execution) and checks the contents."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            "checkpoint %s is corrupted or not an odecore checkpoint (%s: %s)" % (path, type(error).__name__, error)
        ) from None
    if not isinstance(state, dict) or set(state) != CHECKPOINT_KEYS or state.get("format") != FORMAT:
        raise ValueError("checkpoint %s is not an odecore training checkpoint" % path)
    kinds = {"model": dict, "optimizer": dict, "scheduler": dict, "history": list, "args": dict, "rng": torch.Tensor}
    bad = sorted(key for key, kind in kinds.items() if not isinstance(state[key], kind))
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        bad.append("epoch")
    if bad:
        raise ValueError("checkpoint %s is corrupted: wrong type of %s" % (path, ", ".join(bad)))
    return state


def restore(
    state: dict,
    path: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
) -> None:
    """Loads a checkpoint's states into the run's objects; a checkpoint of another model or
    other options is a ValueError (the command line reports it), not a traceback."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        message = str(error).strip()
        raise ValueError(
            "checkpoint %s does not match this run (another model or other options?): %s: %s"
            % (path, type(error).__name__, message.splitlines()[0] if message else "")
        ) from None
