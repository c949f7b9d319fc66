"""
Machinery shared by train.py, sample.py, bench.py and the data scripts, written once:
command-line errors, device and dtype choice, atomic writes, checkpoints, the token bins
and their tokenizer.
"""

import contextlib
import ctypes
import os
import pickle
import random
import sys
import tempfile

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------
# command-line entry points


def cli(main):
    """Run main(); an expected error (bad input: ValueError, OSError) becomes one line on stderr and
    exit code 1, a traceback meaning a bug. Set TRACEBACK=1 to see the traceback of any error."""
    try:
        main()
    except (ValueError, OSError) as e:
        if os.environ.get('TRACEBACK'):
            raise
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------------------------
# device and dtype

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def resolve_device(device='auto'):
    """'auto' picks cuda > mps > cpu; an explicit device must exist here."""
    if device == 'auto':
        if torch.cuda.is_available():
            return 'cuda'
        if torch.backends.mps.is_available():
            return 'mps'
        return 'cpu'
    kind = device.split(':')[0]
    if kind == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here: use --device=cpu (or 'auto')")
    if kind == 'mps' and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available here: use --device=cpu (or 'auto')")
    if kind not in ('cuda', 'mps', 'cpu'):
        raise ValueError(f"device={device!r} is not one of auto, cpu, cuda, cuda:N, mps")
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


def autocast(device, dtype):
    """Mixed precision context: parameters stay fp32, matmuls run in dtype (nothing for float32)."""
    if dtype == 'float32':
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(':')[0], dtype=DTYPES[dtype])


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
# atomic writes: a file either exists whole or not at all


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; when the block ends without error, the temporary file
    is flushed to disk and renamed over `path`. On error or interrupt it is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the final file gets the usual permissions
    try:
        yield tmp
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ----------------------------------------------------------------------------------------------
# checkpoints (nanoGPT's keys: model, optimizer, model_args, iter_num, best_val_loss, config)


def save_checkpoint(checkpoint, path):
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path, map_location='cpu'):
    """Load a checkpoint of this project or of nanoGPT, safely (weights_only: it cannot run code)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no checkpoint at {path}: train one with `python train.py ...` '
                                f'(it writes out_dir/ckpt.pt), or check --out_dir')
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f'checkpoint {path} is unreadable or corrupt ({type(e).__name__}: {str(e).splitlines()[0][:200]}); '
                         'it may be from an interrupted copy: restore it or start again with --init_from=scratch') from None
    missing = [k for k in ('model', 'model_args') if k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}: it was not written by train.py (or nanoGPT)")
    checkpoint['model'] = clean_state_dict(checkpoint['model'])
    return checkpoint


def clean_state_dict(state_dict):
    """Undo what torch.compile adds to names (`_orig_mod.`) and drop the causal-mask buffers
    (`attn.bias`) that nanoGPT saved when flash attention was unavailable."""
    out = {}
    for k, v in state_dict.items():
        k = k.replace('_orig_mod.', '')
        if k.endswith('.attn.bias'):
            continue
        out[k] = v
    return out


def model_from_checkpoint(checkpoint, dropout=None):
    """The GPT a checkpoint holds, with its exact architecture (optionally another dropout)."""
    from model import GPT, GPTConfig
    model_args = dict(checkpoint['model_args'])
    if dropout is not None:
        model_args['dropout'] = dropout
    model = GPT(GPTConfig(**model_args))
    result = model.load_state_dict(checkpoint['model'], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f'checkpoint does not match its model_args: missing {result.missing_keys[:5]}, '
                         f'unexpected {result.unexpected_keys[:5]}')
    return model


def rng_state():
    """Every random generator a training run draws from, in types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'python': {'version': version, 'state': list(state), 'gauss': gauss},
    }


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['cached_gaussian']))
    p = state['python']
    random.setstate((p['version'], tuple(p['state']), p['gauss']))


# ----------------------------------------------------------------------------------------------
# token bins: data/<dataset>/{train,val}.bin, one long stream of token ids each, and meta.pkl
# meta.pkl: vocab_size, dtype ('uint16' | 'uint32'), tokenizer ('char' or a tiktoken encoding
# name such as 'gpt2'), and for 'char' the stoi / itos tables. nanoGPT's meta.pkl (char, no
# dtype or tokenizer key) and its meta-less GPT-2 bins read as uint16 / gpt2.


def load_meta(data_dir):
    """The dataset's meta.pkl with defaults filled in, or None when it has none (nanoGPT's GPT-2 bins)."""
    path = os.path.join(data_dir, 'meta.pkl')
    if not os.path.exists(path):
        return None
    with open(path, 'rb') as f:
        meta = pickle.load(f)
    meta.setdefault('dtype', 'uint16')
    meta.setdefault('tokenizer', 'char' if 'stoi' in meta else 'gpt2')
    return meta


def token_dtype(meta):
    return np.dtype(meta['dtype'] if meta else 'uint16')


def vocab_dtype(vocab_size):
    """The smallest unsigned integer type that holds every token id."""
    return 'uint16' if vocab_size <= 2 ** 16 else 'uint32'


class Tokenizer:
    """encode(str) -> list[int] and decode(list[int]) -> str for a dataset's meta (None means GPT-2 BPE)."""

    def __init__(self, meta=None):
        meta = meta or {'tokenizer': 'gpt2'}
        self.name = meta['tokenizer']
        if self.name == 'char':
            self.stoi, self.itos = meta['stoi'], meta['itos']
            self.vocab_size = len(self.stoi)
        else:
            import tiktoken
            self.enc = tiktoken.get_encoding(self.name)
            self.vocab_size = self.enc.n_vocab

    def encode(self, text):
        if self.name == 'char':
            unknown = sorted(set(c for c in text if c not in self.stoi))
            if unknown:
                raise ValueError(f'the text has characters missing from the vocabulary: {"".join(unknown)!r} '
                                 f'({len(unknown)} of them); the model knows only {"".join(sorted(self.stoi))!r}')
            return [self.stoi[c] for c in text]
        return self.enc.encode(text, allowed_special={'<|endoftext|>'})

    def decode(self, ids):
        if self.name == 'char':
            return ''.join(self.itos[i] for i in ids)
        return self.enc.decode(ids)
