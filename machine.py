"""The machine a run uses, decided once and frozen: device, dtype, torch.compile, process group, peak FLOP/s for MFU.

    m = machine.setup(device='auto', dtype='auto', compile=None)   # joins torchrun's group if there is one
    with m.autocast():
        logits, loss = model(x, y)
    m.peak_flops   # the peak_flops given to setup if > 0, else flops.py's: the GPU table, else measured
"""

import contextlib
import ctypes
import datetime
import functools
import gc
import os
import pathlib
import re
import resource
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
# NCCL carries CUDA tensors only: gloo beside it (as torchtitan's) for FSDP's CPU offload, clipping and Muon
GPU_BACKEND = 'cuda:nccl,cpu:gloo'
# not NCCL's 10 minutes: the others wait that long while rank 0 writes a 7B model's ckpt.pt (~110 GB) to a slow disk
GROUP_TIMEOUT = datetime.timedelta(minutes=60)
CPU_INFO = pathlib.Path('/proc/cpuinfo').read_text() if os.path.exists('/proc/cpuinfo') else ''  # none on macOS


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
    def master(self):  # the process that prints, logs and saves
        return self.rank == 0

    def autocast(self):
        """Mixed precision: parameters stay fp32, matmuls run in dtype (nothing for float32)."""
        if self.dtype == 'float32':
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=DTYPES[self.dtype])

    @functools.cached_property
    def peak_flops(self):
        """Peak FLOP/s for MFU, or None when unknown (MPS); decided (flops.py) on the first read only."""
        if self.given_peak_flops:
            return self.given_peak_flops
        import flops
        return flops.peak_flops(self.device, self.dtype)

    def peak_memory(self):  # bytes; 'reserved' is what nvidia-smi shows, less the CUDA context (~0.5 GB)
        if self.device_type == 'cuda':
            return {'allocated': torch.cuda.max_memory_allocated(self.device),
                    'reserved': torch.cuda.max_memory_reserved(self.device)}
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux
        return {'resident': rss if sys.platform == 'darwin' else rss * 1024}

    def peak_memory_text(self):  # 'peak memory of this process 1.20 GB allocated, 1.50 GB reserved'
        sizes = (f'{n / 1e9:.2f} GB {kind}' for kind, n in self.peak_memory().items())
        return 'peak memory of this process ' + ', '.join(sizes)

    def synchronize(self):  # wait for the device's queued work, so that a clock measures it
        if self.device_type == 'cuda':
            torch.cuda.synchronize(self.device)
        elif self.device_type == 'mps':
            torch.mps.synchronize()


def setup(device='auto', dtype='auto', compile=None, backend='auto', peak_flops=0.0):
    """Decide the machine and, under torchrun (RANK set), join the process group, each process on its own GPU."""
    rank = int(os.environ.get('RANK', -1))
    local_rank, world_size = int(os.environ.get('LOCAL_RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    device = resolve_device(device)
    cuda = device.startswith('cuda')
    if backend not in ('auto', 'nccl', 'gloo'):
        raise ValueError(f"backend={backend!r} is not one of auto, nccl, gloo (auto: nccl on GPUs, gloo on CPUs)")
    if rank == -1:  # a single process
        rank, local_rank, world_size, backend = 0, 0, 1, ''
    else:
        if cuda:
            device = f'cuda:{local_rank}'
            torch.cuda.set_device(device)
        elif backend == 'nccl':
            raise ValueError(f"backend='nccl' needs CUDA GPUs, but the device is {device}: use --backend=gloo")
        backend = GPU_BACKEND if cuda and backend != 'gloo' else 'gloo'
        # device_id: NCCL binds its communicator to this GPU now instead of guessing it at the first collective
        import cluster  # torchrun's concerns: only its runs read them
        dist.init_process_group(backend, timeout=GROUP_TIMEOUT, device_id=torch.device(device) if cuda else None,
                                **cluster.attempt_store(rank, world_size))
    dtype = resolve_dtype(dtype, device)
    if compile is None:  # CUDA capability 7.0+ (not MPS); on a CPU compiling outlasts the short runs people make
        compile = cuda and torch.cuda.get_device_capability(torch.device(device))[0] >= 7
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device == 'cpu':
        keep_freed_memory()
    return Machine(device, dtype, compile, rank, local_rank, world_size, backend, native_bf16(device), peak_flops)


def teardown(finished=True):
    """Leave torchrun's process group, if joined. A finished run first waits for the others and frees what refers to
    the group (a DDP wrapper: gloo aborts on a reducer freed after it); a failed one leaves, torchrun ends the rest."""
    if dist.is_initialized():
        if finished:
            gc.collect()
            dist.barrier()
        dist.destroy_process_group()


def resolve_device(device='auto'):
    """'auto' picks cuda > mps > cpu; an explicit device must exist here."""
    available = {'cuda': torch.cuda.is_available(), 'mps': torch.backends.mps.is_available(), 'cpu': True}
    kind = device.split(':')[0]
    if device == 'auto':
        return next(k for k, ok in available.items() if ok)
    if kind not in available:
        raise ValueError(f"device={device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if not available[kind]:
        raise ValueError(f"device={device!r} but {kind.upper()} is not available here: use --device=cpu (or 'auto')")
    return device


def native_bf16(device):
    """bf16 in hardware: CUDA capability 8.0+ (V100, T4 pass is_bf16_supported() by emulating it), AVX512/AMX-BF16."""
    if device.startswith('cuda'):
        return torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)
    return device.startswith('cpu') and ('avx512_bf16' in CPU_INFO or 'amx_bf16' in CPU_INFO)


def resolve_dtype(dtype, device):
    """'auto' picks bfloat16 where native, else float16 on CUDA GPUs (V100, T4: with a GradScaler), else float32."""
    if dtype == 'auto':
        return 'bfloat16' if native_bf16(device) else 'float16' if device.startswith('cuda') else 'float32'
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of auto, {', '.join(DTYPES)}")
    if dtype == 'bfloat16' and device.startswith('cuda') and not torch.cuda.is_bf16_supported():
        raise ValueError("dtype='bfloat16' is not supported by this GPU: use --dtype=float16")
    if dtype == 'float16' and device.startswith('cpu'):
        raise ValueError("dtype='float16' is slow and unsupported for training on CPU: use --dtype=bfloat16 or float32")
    return dtype


def keep_freed_memory():
    """Let glibc keep freed blocks for reuse: unmapping them made every CPU step fault its pages in again (~5%)."""
    with contextlib.suppress(OSError):  # no glibc here
        libc = ctypes.CDLL('libc.so.6')
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: 32 MiB, the most glibc accepts on 64-bit
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def device_name(device):
    """The GPU's name, or the CPU's model and the number of threads torch uses."""
    if device != 'cpu':
        return torch.cuda.get_device_name(torch.device(device)) if device.startswith('cuda') else device
    model = re.search(r'^model name[^:]*:(.*)$', CPU_INFO, re.MULTILINE)
    return f"{model[1].strip() if model else 'cpu'}, torch threads {torch.get_num_threads()}"
