"""The measured device: name, threads, versions, CPU features, and the peak FLOP/s achieved figures are set against."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from bench.perf.config import PerfConfig
from bench.perf.timing import timed

# Dense bf16 tensor-core peaks (NVIDIA datasheets, SXM): H100 989.4, H200 989.4 TFLOP/s.
GPU_PEAK_TFLOPS_BF16 = {"H100": 989.0, "H200": 989.0}


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an ``n x n`` matmul in ``dtype``: the practical peak of this device and thread count."""
    g = torch.Generator("cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    best = min(timed(lambda: a @ b, device, repeats, warmup=2))
    return 2.0 * n**3 / best


def device_info(cfg: PerfConfig) -> dict[str, Any]:
    """Name, threads, versions and the peak FLOP/s the transformer's achieved FLOP/s is compared with."""
    device = torch.device(cfg.device)
    bf16 = cfg.precision == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    info: dict[str, Any] = {
        "type": device.type,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "precision": cfg.precision,
    }
    flags = cpu_flags()
    info["cpu_features"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        info["name"] = name
        known = next((v for k, v in GPU_PEAK_TFLOPS_BF16.items() if k in name), None)
        if bf16 and known is not None:
            info["peak_tflops"] = known
            info["peak_source"] = f"datasheet: {name} dense bf16 {known:g} TFLOP/s"
        else:
            info["peak_tflops"] = matmul_peak_flops(device, dtype, n=8192) / 1e12
            info["peak_source"] = f"measured: best 8192^3 {cfg.precision} matmul"
    else:
        info["name"] = info["cpu"]
        info["peak_tflops"] = matmul_peak_flops(device, dtype) / 1e12
        info["peak_source"] = (
            f"measured: best 2048^3 {cfg.precision} matmul on {torch.get_num_threads()} torch threads "
            "(this machine's practical peak; no vendor figure is published per vCPU)"
        )
    return info
