"""
Memory of one process under DDP and under FSDP (parallel.sharded), measured where it can be without a GPU: CPU
processes with gloo. For each, rank 0 prints after every forward and backward its resident memory now (after
malloc_trim, so that freed memory is not counted) and at its peak. Linux only.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 benchmarks/fsdp_memory.py --parallel=fsdp
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 benchmarks/fsdp_memory.py --parallel=ddp

On a GPU, train.py's last line gives torch.cuda.max_memory_allocated instead (docs/benchmarks.md).
"""

import ctypes
import os
import resource
import sys

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import machine
import parallel
from configurator import cli, configure
from model import GPT, GPTConfig

DEFAULTS = dict(parallel='fsdp', n_layer=12, n_head=12, n_embd=768, block_size=64, vocab_size=64, batch_size=1,
                steps=3)
LIBC = ctypes.CDLL('libc.so.6')


def memory_mb():
    """(now, peak) resident memory of this process in MB; now after handing freed memory back to the system."""
    LIBC.malloc_trim(0)
    with open('/proc/self/statm') as f:
        now = int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    return now // 2 ** 20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main():
    cfg = configure(DEFAULTS, sys.argv[1:])
    m = machine.setup('cpu', 'float32', False)
    config = GPTConfig(n_layer=cfg['n_layer'], n_head=cfg['n_head'], n_embd=cfg['n_embd'],
                       block_size=cfg['block_size'], vocab_size=cfg['vocab_size'])
    torch.manual_seed(0)
    if cfg['parallel'] == 'fsdp':
        model = parallel.sharded(config, m)
        parallel.init_shards(model, m)
    else:
        model = DDP(GPT(config))

    def report(what):
        if m.master:
            now, peak = memory_mb()
            print(f"{cfg['parallel']} on {m.world_size} processes, {what:<14} now {now:>6} MB   peak {peak:>6} MB")

    report('built')
    x = torch.randint(0, cfg['vocab_size'], (cfg['batch_size'], cfg['block_size']))
    for step in range(cfg['steps']):
        loss = model(x, x)[1]
        report(f'forward {step}')
        loss.backward()
        report(f'backward {step}')
        model.zero_grad(set_to_none=True)
    machine.teardown()


if __name__ == '__main__':
    cli(main)
