"""The CUDA branches of the package, run on a CPU with torch.cuda stubbed.

CI has no GPU: these tests check what each branch asks of torch.cuda and what it makes of
the answers (device and profile choice, synchronised phase clocks, the allocator's peak),
not the GPU itself. The real device is exercised by the gpu profile where one is lent.
"""

import pytest
import torch

from rlsd_min.lab.bench import peak_memory_mb
from rlsd_min.config import default_profile, pick_device
from rlsd_min.phases import Phases

MIB = 2**20


def test_cuda_picks_the_device_and_the_gpu_profile(monkeypatch):
    monkeypatch.delenv("RLSD_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device().type == "cuda" and default_profile() == "gpu"
    assert pick_device("cpu").type == "cpu"  # an explicit device wins
    monkeypatch.setenv("RLSD_PROFILE", "ci")
    assert default_profile() == "ci"         # and so does the environment
    monkeypatch.delenv("RLSD_PROFILE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device().type == "cpu" and default_profile() == "cpu"


def test_phase_clock_waits_for_queued_gpu_work(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    with Phases(torch.device("cpu"))("sample"):
        pass
    assert synced == []
    gpu = torch.device("cuda")
    phases = Phases(gpu)
    with phases("sample"):
        pass
    assert synced == [gpu, gpu] and set(phases.metrics()) == {"step_time_s", "time_sample_s"}


def test_cuda_peak_memory_is_the_allocator_peak_above_the_start(monkeypatch):
    allocator = {"allocated": 40 * MIB, "peak": 300 * MIB, "synced": 0}  # a peak left by earlier work

    def reset(device=None):
        allocator["peak"] = allocator["allocated"]

    def allocate(nbytes):
        allocator["allocated"] += nbytes
        allocator["peak"] = max(allocator["peak"], allocator["allocated"])

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: allocator.update(synced=allocator["synced"] + 1))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocator["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: allocator["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)

    def step():
        allocate(64 * MIB)
        allocate(32 * MIB)   # the peak: 96 MiB above the start
        allocate(-96 * MIB)

    assert peak_memory_mb(step, torch.device("cuda")) == pytest.approx(96)
    assert allocator["synced"] == 2  # before reading the start, and before reading the peak
