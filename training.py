"""
The parts of a training run that train.py and bench.py share: the optimizer, the learning rate schedule,
one optimizer step, and the evaluation of the loss.
"""

import math

import torch
import torch.distributed as dist

import machine
import parallel
from muon import MuonAdamW


def configure_optimizer(model, cfg, device):
    """train.py's optimizer for cfg['optimizer']: 'adamw' (nanoGPT's: weight decay on 2-D tensors only) or
    'muon': Muon with muon_lr for the 2-D weights inside the blocks (transformer.h.*), AdamW with learning_rate
    for the rest (embeddings, lm_head, norm gains, biases), weight decay on its 2-D tensors only. Each param
    group's base lr is its 'lr' here; set_lr scales them all by the schedule. Parameters are chosen by name and
    shape, not by module or tensor type, so that a wrapped model (compiled, DDP, FSDP's DTensors: the names
    keep their 'transformer.h.' part) is split the same way."""
    betas = (cfg['beta1'], cfg['beta2'])
    if cfg['optimizer'] == 'adamw':
        return model.configure_optimizers(cfg['weight_decay'], cfg['learning_rate'], betas, device.split(':')[0])
    matrices, others = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (matrices if 'transformer.h.' in name and p.dim() == 2 else others).append(p)
    # Newton-Schulz in bf16 where the device multiplies it natively (Keller Jordan's choice), else fp32
    ns_dtype = torch.bfloat16 if machine.resolve_dtype('auto', device) == 'bfloat16' else torch.float32
    return MuonAdamW([
        {'params': matrices, 'muon': True, 'lr': cfg['muon_lr'], 'momentum': cfg['muon_momentum'],
         'weight_decay': cfg['muon_weight_decay']},
        {'params': [p for p in others if p.dim() >= 2], 'lr': cfg['learning_rate'], 'weight_decay': cfg['weight_decay']},
        {'params': [p for p in others if p.dim() < 2], 'lr': cfg['learning_rate'], 'weight_decay': 0.0},
    ], betas=betas, ns_dtype=ns_dtype)


def get_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters, decay_lr=True, schedule='cosine',
           decay_fraction=0.2):
    """Linear warmup (never 0, even at step 0), then down to min_lr at lr_decay_iters: 'cosine' decays all the
    way; 'wsd' (warmup-stable-decay) stays at learning_rate, then decays linearly over the last decay_fraction
    of the lr_decay_iters steps."""
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    if schedule == 'wsd':
        decay_start = lr_decay_iters * (1 - decay_fraction)
        coeff = min(1.0, (lr_decay_iters - it) / max(1, lr_decay_iters - decay_start))  # 1, then down to 0
    else:
        ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
        coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # from 1 down to 0
    return min_lr + coeff * (learning_rate - min_lr)


def set_lr(optimizer, lr, cfg):
    """Every param group's lr at a step whose scheduled learning rate is lr: AdamW's groups take lr, Muon's
    muon_lr scaled by the same factor, lr / learning_rate."""
    for group in optimizer.param_groups:
        group['lr'] = cfg['muon_lr'] * lr / cfg['learning_rate'] if group.get('muon') else lr


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
    for split in ('train', 'val'):
        losses = torch.zeros(eval_iters, device=m.device, dtype=torch.float64)
        for k in parallel.my_share(eval_iters, m.rank, m.world_size, model):
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
