"""
The machine a run uses, decided once, before anything else: the device, the dtype, torch.compile,
the torchrun process group, and the peak FLOP/s that MFU is measured against.

    m = machine.setup(device='auto', dtype='auto', compile=None)   # joins torchrun's group if there is one
    with m.autocast():
        logits, loss = model(x, y)

The Machine it returns is frozen: every script reads these decisions from it and nobody changes them.
"""

import contextlib
import ctypes
import functools
import gc
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
BACKENDS = ('auto', 'nccl', 'gloo')


@dataclass(frozen=True)
class Machine:
    device: str  # 'cpu', 'cuda:0', 'mps'
    dtype: str  # 'float32', 'bfloat16' or 'float16'
    compile: bool
    rank: int = 0  # this process among all of torchrun's
    local_rank: int = 0  # this process on its node: its GPU
    world_size: int = 1
    backend: str = ''  # of the process group; '' for a single process
    peak_flops_given: float = 0.0

    @functools.cached_property
    def peak_flops(self):
        return self.peak_flops_given or peak_flops(self.device, self.dtype)

    @property
    def native_bf16(self):
        return resolve_dtype('auto', self.device) == 'bfloat16'

    def peak_memory_line(self):
        peak = self.peak_memory()
        return f'; peak memory of this process {peak / 1e9:.2f} GB' if peak else ''

    @property
    def device_type(self):
        return self.device.split(':')[0]

    @property
    def master(self):
        """The process that prints, logs and saves."""
        return self.rank == 0

    def autocast(self):
        """Mixed precision: parameters stay fp32, matmuls run in dtype (nothing for float32)."""
        if self.dtype == 'float32':
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=DTYPES[self.dtype])

    def peak_memory(self):
        """Bytes: the most this process's tensors held on its GPU (torch.cuda.max_memory_allocated), else the
        peak resident memory of the whole process (the CPU, where tensors share it with everything else); None
        where unknown (Windows)."""
        if self.device_type == 'cuda':
            return torch.cuda.max_memory_allocated(self.device)
        try:
            import resource  # Unix only
        except ImportError:
            return None
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == 'darwin' else 1024)

    def synchronize(self):
        """Wait for the device's queued work, so that a clock measures it."""
        if self.device_type == 'cuda':
            torch.cuda.synchronize(self.device)
        elif self.device_type == 'mps':
            torch.mps.synchronize()


def setup(device='auto', dtype='auto', compile=None, backend='auto', peak_flops=0.0):
    """Decide the machine and, under torchrun (RANK set), join the process group. The device is decided
    first: with CUDA every process takes the GPU of its LOCAL_RANK, and the group uses nccl on GPUs."""
    rank, local_rank, world_size = (int(os.environ.get(k, d)) for k, d in
                                    (('RANK', -1), ('LOCAL_RANK', 0), ('WORLD_SIZE', 1)))
    distributed = rank != -1
    device = resolve_device(device)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)} (auto: nccl on GPUs, gloo on CPUs)")
    if distributed:
        if device.startswith('cuda'):
            device = f'cuda:{local_rank}'  # one GPU per process
            torch.cuda.set_device(device)
        if backend == 'auto':
            backend = 'nccl' if device.startswith('cuda') else 'gloo'
        if backend == 'nccl' and not device.startswith('cuda'):
            raise ValueError(f"backend='nccl' needs CUDA GPUs, but the device is {device}: use --backend=gloo")
        dist.init_process_group(backend=backend)
    else:
        rank, local_rank, world_size, backend = 0, 0, 1, ''
    dtype = resolve_dtype(dtype, device)
    if compile is None:
        compile = can_compile(device)
    if device.startswith('cuda'):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device == 'cpu':
        keep_freed_memory()
    return Machine(device, dtype, compile, rank, local_rank, world_size, backend, peak_flops)


def teardown(finished=True):
    """Leave torchrun's process group, if this process joined one. A finished run first waits for the others
    and frees what still refers to the group (a DDP wrapper): gloo aborts a process that destroys its group while
    a peer still uses it, or that frees a DDP reducer after it. A failed one leaves at once: torchrun ends the others."""
    if dist.is_initialized():
        if finished:
            gc.collect()
            dist.barrier()
        dist.destroy_process_group()


def resolve_device(device='auto'):
    """'auto' picks cuda > mps > cpu; an explicit device must exist here."""
    if device == 'auto':
        if torch.cuda.is_available():
            return 'cuda'
        if torch.backends.mps.is_available():
            return 'mps'
        return 'cpu'
    kind = device.split(':')[0]
    if kind not in ('cuda', 'mps', 'cpu'):
        raise ValueError(f"device={device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if kind == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here: use --device=cpu (or 'auto')")
    if kind == 'mps' and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available here: use --device=cpu (or 'auto')")
    return device


def cpu_has_bf16():
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): only then is bf16 faster than fp32."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = f.read()
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def resolve_dtype(dtype, device):
    """'auto' picks bfloat16 where the device computes it natively, float16 on CUDA GPUs without
    bf16 (V100, T4; a GradScaler is then needed), float32 otherwise."""
    kind = device.split(':')[0]
    if dtype == 'auto':
        if kind == 'cuda':
            return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
        if kind == 'cpu':
            return 'bfloat16' if cpu_has_bf16() else 'float32'
        return 'float32'
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of auto, {', '.join(DTYPES)}")
    if dtype == 'bfloat16' and kind == 'cuda' and not torch.cuda.is_bf16_supported():
        raise ValueError("dtype='bfloat16' is not supported by this GPU: use --dtype=float16")
    if dtype == 'float16' and kind == 'cpu':
        raise ValueError("dtype='float16' is slow and unsupported for training on CPU: use --dtype=bfloat16 or float32")
    return dtype


def can_compile(device):
    """torch.compile works on Linux/macOS with CUDA GPUs of compute capability >= 7.0 and on CPUs
    with a C++ compiler; not on Windows or MPS."""
    if sys.platform == 'win32' or device.startswith('mps'):
        return False
    if device.startswith('cuda'):
        return torch.cuda.get_device_capability(torch.device(device))[0] >= 7
    return False  # CPU: compiling takes longer than the short runs people make on CPUs; opt in with --compile=True


def keep_freed_memory():
    """Let glibc keep freed blocks of up to 32 MiB for reuse instead of handing them back to the system.
    PyTorch's CPU tensors come straight from malloc, and by default glibc unmaps large freed blocks and trims
    its heap, so every training step faulted the pages of its new activations and gradients in again
    (~1000 page faults per step, ~5% of the CPU recipe's step time). Linux with glibc only; elsewhere nothing."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from <malloc.h>
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # the largest glibc accepts on 64-bit; larger blocks stay mmapped
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


# ----------------------------------------------------------------------------------------------
# peak FLOP/s, for MFU

# Dense (no sparsity) peak FLOP/s of GPUs in bf16/fp16 tensor-core math, by device-name substring, most
# specific first. Sources: the NVIDIA datasheets.
GPU_PEAK_FLOPS = [
    ('H100 PCIe', 756e12), ('H100 NVL', 835e12), ('H100', 989e12), ('H200', 989e12), ('GH200', 989e12),
    ('A100', 312e12), ('A10G', 125e12), ('L4', 121e12), ('V100', 125e12), ('T4', 65e12),
    ('RTX 4090', 165e12), ('RTX 3090', 71e12),
]


def peak_flops(device, dtype='float32'):
    """Peak FLOP/s of `device` for matmuls in `dtype`, or None when unknown (MFU is then not shown; pass
    --peak_flops to set it). GPUs from the table above; a CPU is measured once with a large matmul."""
    device = torch.device(device)
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        return next((flops for key, flops in GPU_PEAK_FLOPS if key in name), None)
    if device.type == 'cpu':
        return cpu_peak_flops(DTYPES[dtype])
    return None


def cpu_peak_flops(dtype=torch.float32, n=1024):
    """Best of a few n^3 matmuls in `dtype` on this CPU, the most its matrix units deliver in practice.
    n=1024 measures within 3% of n=2048 on 2 cores in an eighth of the time (~0.1 s). The operands come from
    a generator of their own: the global one belongs to the training run (dropout), resumed bit for bit."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    best = float('inf')
    for _ in range(8):  # the best of several: another process may be running during one of them
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def device_name(device):
    """The GPU's name, or the CPU's model and the number of threads torch uses."""
    if device.startswith('cuda'):
        return torch.cuda.get_device_name(torch.device(device))
    name = device
    if device == 'cpu':
        try:
            with open('/proc/cpuinfo') as f:
                name = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), 'cpu')
        except OSError:
            name = 'cpu'
        name += f', torch threads {torch.get_num_threads()}'
    return name
