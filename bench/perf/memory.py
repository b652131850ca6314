"""Peak memory of a block: CUDA's allocator peak, or the process RSS polled by a thread on the CPU."""

from __future__ import annotations

import threading
from typing import Any

import torch


class PeakMemory:
    """Peak memory of a block in MiB, as a context manager.

    ``torch.cuda.max_memory_allocated`` on CUDA, else the process RSS polled by a psutil thread every ``interval`` s
    (use around untimed runs: the poller takes the GIL).

    Attributes after the block: ``peak_mb``, ``baseline_mb`` (at entry), ``kind``.
    """

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.device, self.interval = device, interval
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss"
        self.peak_mb = self.baseline_mb = float("nan")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0

    def _poll(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self._peak = max(self._peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            import psutil

            self._peak = psutil.Process().memory_info().rss
            self.baseline_mb = self._peak / 2**20
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            import psutil

            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._peak = max(self._peak, psutil.Process().memory_info().rss)
            self.peak_mb = self._peak / 2**20

    def as_dict(self) -> dict[str, Any]:
        """The readings as ``{"peak_mb", "baseline_mb", "kind"}`` (what the perf report stores)."""
        return {"peak_mb": self.peak_mb, "baseline_mb": self.baseline_mb, "kind": self.kind}
