"""
The parts of a training run that train.py and bench.py share: the learning rate schedule, one optimizer
step, and the evaluation of the loss.
"""

import math

import torch
import torch.distributed as dist

import parallel


def get_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters, decay_lr=True):
    """Linear warmup (never 0, even at step 0), then cosine decay to min_lr at lr_decay_iters."""
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # from 1 down to 0
    return min_lr + coeff * (learning_rate - min_lr)


def tokens_per_iter(cfg):
    """Tokens per optimizer step, summed over all processes."""
    return cfg['gradient_accumulation_steps'] * cfg['batch_size'] * cfg['block_size']


def train_step(model, optimizer, scaler, batches, m, iter_num, grad_accum, grad_clip):
    """One optimizer step: grad_accum micro-steps of forward and backward on this process (the GradScaler does
    nothing unless float16), clip, step, zero_grad. The micro-steps are numbered over all processes, so that
    every process draws other batches and the run's batches do not depend on the number of processes.
    `m` is the Machine. Returns this process's mean loss, on the device."""
    loss_sum = torch.zeros((), device=m.device)
    for micro_step in range(grad_accum):
        x, y = batches.train_batch(iter_num, m.rank * grad_accum + micro_step)
        if m.world_size > 1:
            parallel.sync_gradients(model, micro_step == grad_accum - 1)
        with m.autocast():
            _, loss = model(x, y)
            loss = loss / grad_accum  # the gradients add up over the micro-steps: take their mean
        loss_sum += loss.detach()
        scaler.scale(loss).backward()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum


@torch.no_grad()
def estimate_loss(model, batches, m, eval_iters):
    """Mean loss over the same eval_iters batches of each split at every eval, shared between the processes:
    each computes its share of the batches, and the per-batch losses are summed in one order, so the same
    model gives the same value, to the last bit, on any number of processes."""
    model.eval()
    out = {}
    # FSDP's processes gather parameters together, so each must run as many forwards: some run a spare one
    forwards = -(-eval_iters // m.world_size) * m.world_size if parallel.is_sharded(model) else eval_iters
    for split in ('train', 'val'):
        losses = torch.zeros(eval_iters, device=m.device, dtype=torch.float64)
        for k in range(m.rank, forwards, m.world_size):
            x, y = batches.eval_batch(split, min(k, eval_iters - 1))
            with m.autocast():
                _, loss = model(x, y)
            if k < eval_iters:
                losses[k] = loss.item()
        if m.world_size > 1:
            dist.all_reduce(losses)  # each entry is set by one process, 0 on the others: the sum is exact
        out[split] = losses.sum().item() / eval_iters
    model.train()
    return out
