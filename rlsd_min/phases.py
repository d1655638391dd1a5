"""The phases of an RL step, timed: `with phases("sample", autocast=True): ...`.

Each phase adds its wall time to its name (step_time_s, time_<phase>_s in the metrics), and
runs under bfloat16 autocast when asked and the run has it on (cfg.bf16_autocast). On CUDA the
clock waits for queued GPU work first, so phases are timed, not launched. The step's algorithm
(rlsd_min.step) names its phases and nothing more; the loop and rlsd_min.lab.bench read them.
"""

from __future__ import annotations

import contextlib
import time

import torch

from .decoding import bf16_autocast


class Phases:
    """Wall time of named phases, and the precision they run in."""

    def __init__(self, device, bf16: bool = False):
        self.device, self.bf16, self.seconds = torch.device(device), bf16, {}
        self.start = self.last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str, autocast: bool = False):
        """Time the block as phase `name` (added to its earlier time; the phase's clock runs from
        the end of the previous phase, so the phases add up to the step); autocast=True runs it
        under bfloat16 autocast when the run has bf16 on (forwards only: losses stay float32)."""
        with bf16_autocast(self.device, autocast and self.bf16):
            yield
        now = self._now()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.last
        self.last = now

    def metrics(self) -> dict:
        """step_time_s (from the start to the end of the last phase) and time_<phase>_s of every phase that ran."""
        return {"step_time_s": self.last - self.start, **{f"time_{k}_s": v for k, v in self.seconds.items()}}
