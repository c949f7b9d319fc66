"""
A run continued where it stopped (train.py --init_from=resume): the optimizer, the GradScaler and every process's
random generators put back as the checkpoint saved them (checkpoint.all_rng_states), so that the run draws what the
uninterrupted one would have. Only resumed runs import this module.

    iter_num, best_val_loss = resume.restore(ckpt, model, optimizer, scaler, cfg, machine)
"""

import random

import numpy as np
import torch
from torch.distributed.fsdp import FSDPModule


def restore(ckpt, model, optimizer, scaler, cfg, machine):
    """Put the optimizer, the GradScaler and every process's random generators back; the iteration to go on from
    and the best val loss so far."""
    trained_with = ckpt['config'].get('optimizer', 'adamw')  # nanoGPT's checkpoints: AdamW
    if trained_with != cfg.optimizer:
        raise ValueError(f'the checkpoint was trained with optimizer={trained_with!r}, whose state cannot go on with '
                         f'{cfg.optimizer!r}: resume with --optimizer={trained_with}')
    if not load_optimizer(ckpt, model, optimizer) and machine.master:
        print(f"note: {cfg.out_dir}'s checkpoint has no optimizer state (a shared copy?): the optimizer starts fresh")
    if ckpt.get('scaler'):
        scaler.load_state_dict(ckpt['scaler'])
    states = ckpt.get('rng', [])
    states = [states] if isinstance(states, dict) else states  # one dict: this project's first version
    if not usable_rng_states(states):
        states = []  # written by another torch or program
    if len(states) == machine.world_size:
        set_rng_state(states[machine.rank])
    else:  # another number of processes: the dropout streams cannot continue as they were
        torch.manual_seed(cfg.seed + machine.rank + ckpt.get('iter_num', 0))
        if machine.master:
            print(f'note: the checkpoint has the random state of {len(states)} processes, this run has '
                  f'{machine.world_size}: dropout draws new random numbers from here')
    return ckpt.get('iter_num', 0), ckpt.get('best_val_loss', 1e9)


def load_optimizer(ckpt, model, optimizer):
    """The checkpoint's optimizer state into `optimizer`, from either format; False (it stays fresh) if it has none."""
    if 'sharded' not in ckpt and not ckpt.get('optimizer'):
        return False  # a checkpoint shared without it: the caller says that the optimizer starts fresh
    if 'sharded' in ckpt or isinstance(model, FSDPModule):  # shards to read, or an FSDP model
        import sharded_checkpoint
        sharded_checkpoint.load_optimizer(ckpt, model, optimizer)
    else:
        optimizer.load_state_dict(ckpt['optimizer'])
    return True


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    cuda = state['cuda']
    if isinstance(cuda, list):  # older checkpoints: every visible GPU's; this process's own is at its index
        cuda = cuda[torch.cuda.current_device()] if torch.cuda.is_available() and \
            torch.cuda.current_device() < len(cuda) else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
    n = state['numpy']
    keys = n['keys'].numpy().astype(np.uint32)
    np.random.set_state((n['kind'], keys, n['pos'], n['has_gauss'], n['cached_gaussian']))
    p = state['python']
    random.setstate((p['version'], tuple(p['state']), p['gauss']))


def usable_rng_states(states):
    """Whether `states`, a list of rng_state() dicts, fit this torch, numpy and Python."""
    try:
        return isinstance(states, list) and all(
            s['torch'].dtype == torch.uint8 and s['torch'].shape == torch.get_rng_state().shape
            and isinstance(s['cuda'], (list, torch.Tensor, type(None))) and s['numpy']['keys'].shape == (624,)
            and isinstance(s['numpy']['pos'], int) and len(s['python']['state']) == 625 for s in states)
    except (KeyError, TypeError, AttributeError):
        return False
