"""
The peak FLOP/s of a device, for MFU: a GPU's from gpu_peak_flops.csv (dense bf16/fp16; its sources are there),
else a matmul measured now (a CPU, or a GPU missing from the table); None on MPS.

    flops.peak_flops('cuda:0', 'bfloat16')   # 989.4e12 on an H100 SXM
"""

import csv
import os
import re
import time

import torch

# {GPU name: peak FLOP/s}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gpu_peak_flops.csv'), newline='') as f:
    rows = csv.DictReader(line for line in f if not line.startswith('#'))
    GPU_PEAK_FLOPS = {row['name']: float(row['tflops']) * 1e12 for row in rows}


def gpu_key(name):
    """'NVIDIA A100-SXM4-80GB' -> 'A100', 'Tesla V100-PCIE-16GB' -> 'V100 PCIE': a GPU's name as the table writes it."""
    words = re.split(r'[\s_-]+', name.strip().upper())
    return ' '.join(w for w in words if w and not re.fullmatch(r'NVIDIA|TESLA|GEFORCE|\d+GB?|HBM\d*E?|SXM\d*', w))


def gpu_table_peak(name):
    """The table's peak FLOP/s for the GPU named `name` (torch.cuda.get_device_name), None if it is missing."""
    return next((flops for key, flops in GPU_PEAK_FLOPS.items() if gpu_key(key) == gpu_key(name)), None)


def peak_flops(device, dtype='float32'):
    """The table's peak for a GPU in it (exactly: an L40S is not an L40), else a matmul measured now; None on MPS."""
    device, dtype = torch.device(device), getattr(torch, dtype)
    if device.type == 'cuda':
        return gpu_table_peak(torch.cuda.get_device_name(device)) or measure_peak_flops(device, dtype, n=8192)
    return measure_peak_flops(device, dtype) if device.type == 'cpu' else None


def measure_peak_flops(device='cpu', dtype=torch.float32, n=1024):
    """n=1024 measures a CPU within 3% of n=2048 in ~0.1 s; a GPU needs n=8192 to fill it."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(0)  # not the global generator: the training run's, resumed exactly
    a, b = (torch.randn(n, n, generator=g, device=device).to(dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == 'cuda' else torch.cpu.synchronize
    best = float('inf')
    for _ in range(8):  # the best of several: another process may be running during one of them
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best
