"""
The machine a run uses, decided once, before anything else: the device, the dtype, torch.compile,
the torchrun process group, and the peak FLOP/s that MFU is measured against.

    m = machine.setup(device='auto', dtype='auto', compile=None)   # joins torchrun's group if there is one
    with m.autocast():
        logits, loss = model(x, y)
    m.peak_flops   # the peak_flops given to setup if > 0, else the GPU's from gpu_peak_flops.csv, else measured

The Machine it returns is frozen: every script reads these decisions from it and nobody changes them.
"""

import contextlib
import csv
import ctypes
import datetime
import functools
import gc
import os
import re
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
BACKENDS = ('auto', 'nccl', 'gloo')
# NCCL carries CUDA tensors only: FSDP's CPU offload clips gradients and runs Muon's all-gathers on CPU tensors,
# so a GPU group has gloo beside NCCL for them (as torchtitan's)
GPU_BACKEND = 'cuda:nccl,cpu:gloo'
# NCCL's watchdog ends a run whose collective waits 10 minutes; rank 0 writing a large model's ckpt.pt alone
# (7B with AdamW: ~110 GB) keeps the others waiting in the next collective longer than that on a slow disk
GROUP_TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class Machine:
    device: str  # 'cpu', 'cuda:0', 'mps'
    dtype: str  # 'float32', 'bfloat16' or 'float16'
    compile: bool
    rank: int = 0  # this process among all of torchrun's
    local_rank: int = 0  # this process on its node: its GPU
    world_size: int = 1
    backend: str = ''  # of the process group ('cuda:nccl,cpu:gloo' on GPUs); '' for a single process
    native_bf16: bool = False  # the device computes bf16 natively (CUDA compute capability >= 8.0, AVX512-BF16/AMX)
    given_peak_flops: float = 0.0  # the peak_flops key; 0: the GPU table, else measured (see peak_flops)

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

    @functools.cached_property
    def peak_flops(self):
        """Peak FLOP/s for MFU, or None when unknown (MPS): the peak_flops given to setup if > 0, else the GPU's
        from gpu_peak_flops.csv, else a matmul measured on this device (once, when first read)."""
        return self.given_peak_flops or peak_flops(self.device, self.dtype)

    def peak_memory(self):
        """Bytes, {} where unknown (Windows). On a GPU the most this process's tensors held ('allocated') and the
        most its caching allocator held ('reserved': nvidia-smi shows that plus the CUDA context, ~0.5 GB); on
        the CPU the peak resident memory of the whole process ('resident')."""
        if self.device_type == 'cuda':
            return {'allocated': torch.cuda.max_memory_allocated(self.device),
                    'reserved': torch.cuda.max_memory_reserved(self.device)}
        try:
            import resource  # Unix only
        except ImportError:
            return {}
        return {'resident': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == 'darwin' else 1024)}

    def peak_memory_text(self):
        """peak_memory as 'peak memory of this process 1.20 GB allocated, 1.50 GB reserved', '' where unknown."""
        peak = self.peak_memory()
        return 'peak memory of this process ' + ', '.join(f'{v / 1e9:.2f} GB {k}' for k, v in peak.items()) if peak else ''

    def synchronize(self):
        """Wait for the device's queued work, so that a clock measures it."""
        if self.device_type == 'cuda':
            torch.cuda.synchronize(self.device)
        elif self.device_type == 'mps':
            torch.mps.synchronize()


def setup(device='auto', dtype='auto', compile=None, backend='auto', peak_flops=0.0):
    """Decide the machine and, under torchrun (RANK set), join the process group. The device is decided
    first: with CUDA every process takes the GPU of its LOCAL_RANK, and the group uses NCCL for CUDA tensors
    and gloo for CPU ones. peak_flops > 0 is the device's peak FLOP/s for MFU (Machine.peak_flops)."""
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
        if backend == 'nccl' and not device.startswith('cuda'):
            raise ValueError(f"backend='nccl' needs CUDA GPUs, but the device is {device}: use --backend=gloo")
        if backend in ('auto', 'nccl'):
            backend = GPU_BACKEND if device.startswith('cuda') else 'gloo'
        # device_id: NCCL binds its communicator to this GPU now instead of guessing it at the first collective
        dist.init_process_group(backend=backend, timeout=GROUP_TIMEOUT,
                                **({'device_id': torch.device(device)} if device.startswith('cuda') else {}))
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
    return Machine(device, dtype, compile, rank, local_rank, world_size, backend, native_bf16(device), peak_flops)


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


def native_bf16(device):
    """Whether `device` computes bf16 natively: CUDA GPUs of compute capability 8.0 and up (A100 onwards;
    torch.cuda.is_bf16_supported() is also True on V100/T4, which emulate it slowly), CPUs with AVX512-BF16/AMX."""
    kind = device.split(':')[0]
    if kind == 'cuda':
        return torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)
    return kind == 'cpu' and cpu_has_bf16()


def resolve_dtype(dtype, device):
    """'auto' picks bfloat16 where the device computes it natively, float16 on CUDA GPUs without
    (V100, T4; a GradScaler is then needed), float32 otherwise."""
    kind = device.split(':')[0]
    if dtype == 'auto':
        if native_bf16(device):
            return 'bfloat16'
        return 'float16' if kind == 'cuda' else 'float32'
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

def read_gpu_table(path=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gpu_peak_flops.csv')):
    """{name: dense bf16/fp16 peak FLOP/s} from gpu_peak_flops.csv (its sources are there)."""
    with open(path, newline='') as f:
        rows = csv.DictReader(line for line in f if not line.startswith('#'))
        return {row['name']: float(row['tflops']) * 1e12 for row in rows}


GPU_PEAK_FLOPS = read_gpu_table()


def gpu_key(name):
    """A GPU's name as the table writes it: 'NVIDIA A100-SXM4-80GB' -> 'A100', 'Tesla V100-PCIE-16GB' ->
    'V100 PCIE', 'NVIDIA GeForce RTX 4090' -> 'RTX 4090'; compared case-insensitively."""
    words = re.split(r'[\s_-]+', name.strip().upper())
    drop = re.compile(r'NVIDIA|TESLA|GEFORCE|\d+GB?|HBM\d*E?|SXM\d*')
    return ' '.join(w for w in words if w and not drop.fullmatch(w))


def gpu_table_peak(name):
    """The table's peak FLOP/s for the GPU named `name` (torch.cuda.get_device_name), None if it is missing."""
    return next((flops for key, flops in GPU_PEAK_FLOPS.items() if gpu_key(key) == gpu_key(name)), None)


def peak_flops(device, dtype='float32'):
    """Peak FLOP/s of `device` for matmuls in `dtype`, or None when unknown (MPS). A GPU whose name is in
    the table (exactly: an L40S is not an L40) gets its datasheet's dense peak; another GPU, and a CPU, a
    matmul measured now. Machine.peak_flops calls this once per run."""
    device = torch.device(device)
    if device.type == 'cuda':
        return gpu_table_peak(torch.cuda.get_device_name(device)) or measure_peak_flops(device, DTYPES[dtype], n=8192)
    if device.type == 'cpu':
        return measure_peak_flops(device, DTYPES[dtype])
    return None


def measure_peak_flops(device='cpu', dtype=torch.float32, n=1024):
    """Best of a few n^3 matmuls in `dtype` on `device`, the most its matrix units deliver in practice.
    On a CPU n=1024 measures within 3% of n=2048 on 2 cores in an eighth of the time (~0.1 s); a GPU needs
    n=8192 to fill it. The operands come from a generator of their own: the global one belongs to the
    training run (dropout), resumed bit for bit."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, generator=g, device=device).to(dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda *a: None)
    best = float('inf')
    for _ in range(8):  # the best of several: another process may be running during one of them
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
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
