"""The machinery the torchrun-ready training loops share (:mod:`pgl_core.pretrain`, :mod:`pgl_core.finetune`).

A recipe writes its loop in the nanoGPT order -- data, forward, backward, clip, step (EMA), log,
checkpoint -- and leaves the bookkeeping to this module: the SIGTERM stop flag, step-indexed seeds,
autocast dtype and matmul numerics, the collective non-finite guard, the metric window and the
log / checkpoint cadence (:class:`LoopControl`), train-state save / resume with the resume-config
check, the metrics sink of a rank, and the command-line pattern with its exit codes.

Nothing here reads a configuration section: a recipe passes the values of its own, so what a
stage reads stays visible in its module.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from pgl_core import checkpoint as ckpt
from pgl_core import distributed as dist_utils
from pgl_core.config import ConfigError, add_config_arguments, load_config
from pgl_core.exits import EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED, EXIT_USAGE  # noqa: F401 - re-exported
from pgl_core.sinks import JsonlSink, MetricsSink, NullSink

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive steps with a non-finite loss or gradient norm."""


class StopFlag:
    """Set by SIGTERM (handler installed only from the main thread, restored on exit)."""

    def __init__(self) -> None:
        self.set = False
        self._previous: Any = None

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.set = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of step ``step`` on rank ``rank``: a pure function of the three (resume-exact)."""
    return int(np.random.SeedSequence([seed, rank, step, 0x91]).generate_state(1, dtype=np.uint64)[0] >> 1)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 for ``amp`` "bf16", or "auto" on CUDA; None (fp32) otherwise."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; no autocast (fp32) for None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def set_numerics(tf32: bool, device: torch.device) -> None:
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = bool(tf32)


def start_world(device: str | None, tf32: bool, batch_size: int, batch_key: str) -> dist_utils.WorldInfo:
    """Join the process group (torchrun's environment, or a single process), set the matmul numerics
    and check that the global batch ``batch_size`` (config key ``batch_key``) splits over the ranks."""
    world = dist_utils.init_distributed(device)
    set_numerics(tf32, world.device)
    if batch_size % world.world_size:
        raise ConfigError(f"{batch_key} {batch_size} is not divisible by {world.world_size} ranks")
    return world


def ddp(model: nn.Module, world: dist_utils.WorldInfo, ignore: list[str] | None = None) -> nn.Module:
    """``model`` under DDP when the world is distributed (``ignore``: names DDP leaves unsynchronised)."""
    if not world.distributed:
        return model
    if ignore and hasattr(DDP, "_set_params_and_buffers_to_ignore_for_model"):
        DDP._set_params_and_buffers_to_ignore_for_model(model, ignore)
    return DDP(model, device_ids=None, find_unused_parameters=False)


@dataclass(frozen=True)
class RunOutput:
    """Where a run writes (checkpoints, metrics, its artefacts)."""

    uri: str
    storage_options: dict | None = None

    def join(self, name: str) -> str:
        return self.uri.rstrip("/") + "/" + name


@dataclass
class TrainState:
    """What a checkpoint restores and the loop advances: weights, optimiser, step and skipped steps."""

    model: nn.Module  # the unwrapped module (no compile / DDP wrapper)
    optimizer: torch.optim.Optimizer
    step: int = 0
    skipped: int = 0


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], uri: str, sections: tuple[str, ...],
                        fields: dict[str, tuple[str, ...]] | None = None) -> None:
    """Refuse to resume from checkpoint ``uri`` when a config section of ``sections``, or a field
    of ``fields`` ({section: names}), differs between the saved and the current config."""
    for section in sections:
        if saved.get(section) != current.get(section):
            raise ConfigError(f"checkpoint {uri}: config section {section!r} differs from the current run; "
                              "use a new output URI or the same config")
    for section, names in (fields or {}).items():
        for name in names:
            was, now = saved[section].get(name), current[section].get(name)
            if was != now:
                raise ConfigError(f"checkpoint {uri}: {section}.{name} {was!r} differs from {now!r}; "
                                  "use a new output URI or the same value")


def resume_train_state(state: TrainState, out: RunOutput, world: dist_utils.WorldInfo,
                       check: Callable[[dict[str, Any], str], None]) -> tuple[dict[str, Any], str] | None:
    """Load the latest valid checkpoint under ``out`` into ``state`` after ``check(saved, uri)``: the
    weights, optimiser, step, skipped steps and this rank's RNG states (when saved by as many ranks).
    Returns (the saved dict, its URI), or None for a fresh start."""
    found = ckpt.load_latest(out.uri, out.storage_options, map_location="cpu")
    if found is None:
        return None
    saved, uri = found
    check(saved, uri)
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.step, state.skipped = int(saved["step"]), int(saved.get("skipped_steps", 0))
    rng = saved.get("rng") or []
    if len(rng) == world.world_size:
        ckpt.restore_rng(rng[world.rank])
    else:
        log.warning("checkpoint %s saved by %d ranks, resuming on %d: RNG states not restored",
                    uri, len(rng), world.world_size)
    if world.is_main:
        log.info("resumed from %s at step %d", uri, state.step)
    return saved, uri


def save_train_state(state: TrainState, fields: dict[str, Any], out: RunOutput, keep: int) -> str | None:
    """Collective: gather every rank's RNG states; rank 0 writes the checkpoint (``state`` and the
    recipe's ``fields``), keeping the newest ``keep``; all wait. Returns the URI on rank 0."""
    rng = dist_utils.all_gather_objects(ckpt.capture_rng())
    uri = None
    if dist_utils.is_main():
        saved = {"format_version": 1, "step": state.step, "skipped_steps": state.skipped,
                 "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(), **fields,
                 "rng": rng, "torch_version": torch.__version__}
        uri = ckpt.save_checkpoint(out.uri, state.step, saved, out.storage_options, keep=keep)
    dist_utils.barrier()
    return uri


@contextlib.contextmanager
def open_sink(sink: MetricsSink | None, world: dist_utils.WorldInfo, out: RunOutput) -> Iterator[MetricsSink]:
    """The sink of this rank: ``sink`` (default ``<out>/metrics.jsonl``) on rank 0, a NullSink on the
    others. Closed on exit unless the caller passed it in."""
    own = sink is None
    if not world.is_main:
        sink = NullSink()
    elif sink is None:
        sink = JsonlSink(out.join("metrics.jsonl"), out.storage_options)
    try:
        yield sink
    finally:
        if own or not world.is_main:
            sink.close()


@dataclass
class WindowStats:
    """A metric window's summary: mean losses (over its applied steps and all ranks), seconds, seconds
    spent waiting for data, steps run and steps applied (finite)."""

    means: dict[str, float]
    elapsed: float
    wait: float
    steps: int
    applied: int


PROGRESS_EVERY_S = 20.0  # a progress line at most this often (and at the first log and the last step)


def progress_line(step: int, total: int, end: int, metrics: dict[str, float], seconds_per_step: float) -> str:
    """``step 120/1000 (12%)  loss 0.8123  9.8 samples/s  ETA 2m31s``: losses and throughput of the
    window just logged; the ETA is to ``end``, where this invocation stops."""
    shown = [f"{k} {v:.4f}" for k, v in metrics.items() if "loss" in k]
    shown += [f"{metrics[k]:.1f} {k.replace('_per_s', '')}/s" for k in ("samples_per_s", "steps_per_s") if k in metrics]
    left = max(end - step, 0) * seconds_per_step
    if left >= 3600:
        eta = f"{int(left // 3600)}h{int(left % 3600 // 60):02d}m"
    else:
        eta = f"{int(left // 60)}m{int(left % 60):02d}s"
    return f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)  " + "  ".join(shown) + f"  ETA {eta}"


class MetricWindow:
    """The losses of the steps since the last log, summed on the device (no host sync per step)."""

    def __init__(self, names: tuple[str, ...], device: torch.device) -> None:
        self.names, self.device = names, device
        self.printed_at: float | None = None
        self.reset()

    def reset(self) -> None:
        self.t0, self.wait, self.steps, self.applied = time.perf_counter(), 0.0, 0, 0
        self.sum = torch.zeros(len(self.names), device=self.device)

    def fetch(self, it: Iterator) -> Any:
        """The next batch of ``it``; the time spent waiting for it counts as data wait."""
        t = time.perf_counter()
        data = next(it)
        self.wait += time.perf_counter() - t
        return data

    def add(self, losses: torch.Tensor) -> None:
        self.sum += losses
        self.applied += 1

    def stats(self) -> WindowStats:
        """Collective: the window's summary, its mean losses averaged over ranks."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        mean = dist_utils.all_reduce_mean(self.sum / max(self.applied, 1)).tolist()
        return WindowStats(dict(zip(self.names, mean)), elapsed, self.wait, self.steps, self.applied)

    def log(self, step: int, metrics: dict[str, float], sink: MetricsSink, history: list,
            progress: tuple[int, int] | None = None) -> None:
        """Write ``metrics`` to the sink and ``history``, then start a new window. With ``progress`` =
        (total steps, this invocation's end step), also print a :func:`progress_line` (on a terminal
        and, through the launcher, in the run's Prefect logs) at most every ``PROGRESS_EVERY_S``."""
        sink.log_metrics(step, metrics)
        history.append({"step": float(step), **metrics})
        now = time.perf_counter()
        if progress is not None and (self.printed_at is None or now - self.printed_at >= PROGRESS_EVERY_S
                                     or step >= progress[1]):
            per_step = (now - self.t0) / max(self.steps, 1)
            print(progress_line(step, progress[0], progress[1], metrics, per_step), flush=True)
            self.printed_at = now
        self.reset()


def stop_at(step: int, total: int, max_steps: int | None) -> int:
    """The step this invocation ends at: ``total``, or ``max_steps`` after ``step`` if that is sooner."""
    return total if max_steps is None else min(total, step + max_steps)


@dataclass(frozen=True)
class Cadence:
    """A loop's length, log / checkpoint intervals and non-finite tolerance."""

    total: int  # the run's steps
    end: int  # this invocation's last step (stop_at)
    log_every: int
    checkpoint_every_steps: int
    checkpoint_every_minutes: float
    max_consecutive_nonfinite: int


class LoopControl:
    """The per-step bookkeeping of a loop: SIGTERM, the collective non-finite guard, the metric window
    and the log / checkpoint cadence. Entered around the loop (the SIGTERM handler lives that long)."""

    def __init__(self, cadence: Cadence, loss_names: tuple[str, ...], device: torch.device) -> None:
        self.cadence, self.device = cadence, device
        self.window = MetricWindow(loss_names, device)
        self.consecutive = 0
        self.stop_now = self.due_now = False
        self._stop = StopFlag()
        self._last_checkpoint = time.monotonic()

    def __enter__(self) -> "LoopControl":
        self._stop.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.__exit__(*exc)

    def fetch(self, it: Iterator) -> Any:
        return self.window.fetch(it)

    def guard(self, state: TrainState, losses: torch.Tensor, gnorm: torch.Tensor) -> bool:
        """Collective: True when this step's update may be applied (loss and gradient norm finite on
        every rank; its losses join the window). Otherwise the gradients are dropped and the step is
        counted as skipped; ``max_consecutive_nonfinite`` in a row raise NonFiniteLossError. Also
        agrees over ranks on SIGTERM (``stop_now``) and a time-based checkpoint (``due_now``)."""
        due = (time.monotonic() - self._last_checkpoint) / 60.0 >= self.cadence.checkpoint_every_minutes
        flags = torch.stack([(~torch.isfinite(losses).all()).float(), (~torch.isfinite(gnorm)).float(),
                             torch.tensor(float(self._stop.set), device=self.device),
                             torch.tensor(float(due), device=self.device)])
        bad_loss, bad_grad, stop_now, due_now = dist_utils.all_reduce_max(flags).tolist()
        self.stop_now, self.due_now = bool(stop_now), bool(due_now)
        if not (bad_loss or bad_grad):
            self.consecutive = 0
            self.window.add(losses)
            return True
        state.skipped, self.consecutive = state.skipped + 1, self.consecutive + 1
        state.optimizer.zero_grad(set_to_none=True)
        if self.consecutive >= self.cadence.max_consecutive_nonfinite:
            raise NonFiniteLossError(f"{self.consecutive} consecutive non-finite steps ending at step {state.step} "
                                     f"(loss {losses.tolist()}, grad norm {float(gnorm)})")
        return False

    def end_step(self, state: TrainState) -> None:
        state.step += 1
        self.window.steps += 1

    def log_due(self, step: int) -> bool:
        return step % self.cadence.log_every == 0 or step == self.cadence.end

    def checkpoint_due(self, step: int) -> bool:
        c = self.cadence
        return self.stop_now or self.due_now or step % c.checkpoint_every_steps == 0 or step == c.end

    def checkpointed(self) -> None:
        self._last_checkpoint = time.monotonic()

    def status(self, step: int) -> str:
        """How the loop ended at ``step``: "preempted" (SIGTERM), "stopped" (before the run's last step)
        or "completed"."""
        if self.stop_now:
            return "preempted"
        return "stopped" if step < self.cadence.total else "completed"


def parse_loop_args(argv: list[str] | None, module: str, description: str,
                    add_arguments: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """The command line of ``python -m <module>``: ``--store``, the recipe's ``add_arguments``, the
    config arguments, ``--max-steps`` and ``--device``."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    p.add_argument("--store", required=True, help="Store root URI (local path or s3://...).")
    add_arguments(p)
    add_config_arguments(p)
    p.add_argument("--max-steps", type=int, default=None, help="Stop after this many steps of this invocation.")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default).")
    return p.parse_args(argv)


def run_main(args: argparse.Namespace, train: Callable[[Any], Any], describe: Callable[[Any, Any], str],
             what: str) -> int:
    """The entry point of a loop under ``torchrun``: ``train(cfg)`` with the config of ``args``, then
    rank 0 prints ``describe(cfg, result)``. Exit EXIT_OK done (or stopped at --max-steps),
    EXIT_PREEMPTED by SIGTERM (checkpoint written; rerun to resume), EXIT_USAGE on a ConfigError
    (usage, config, contract), EXIT_FAILED on NonFiniteLossError (``what`` failed)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides, preset=args.preset)
        result = train(cfg)
        rank = dist_utils.get_rank()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as exc:
        print(f"{what} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        dist_utils.cleanup()
    if rank == 0:
        print(describe(cfg, result))
    return EXIT_PREEMPTED if result.status == "preempted" else EXIT_OK
