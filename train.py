"""
Train a GPT: from scratch, resuming a run, or finetuning OpenAI's GPT-2. One process or many.

    python train.py config/train_shakespeare_char_cpu.py      # a laptop CPU, about a minute
    python train.py config/train_shakespeare_char.py          # one GPU
    python train.py config/train_shakespeare_char.py --init_from=resume --max_iters=6000
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
    python train.py --help                                    # every key and its default

Writes out_dir/ckpt.pt (atomically) and out_dir/metrics.jsonl (one JSON object per log line).
"""

import json
import math
import os
import sys
import time
from dataclasses import fields

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import common
from configurator import configure
from model import GPT, GPTConfig, device_peak_flops

# default config values: GPT-2 (124M) on OpenWebText, as nanoGPT
DEFAULTS = dict(
    # I/O
    out_dir='out',
    eval_interval=2000,
    log_interval=1,
    eval_iters=200,
    eval_only=False,  # evaluate once and exit
    always_save_checkpoint=True,  # save at every eval, not only when val loss improves
    init_from='scratch',  # 'scratch', 'resume' (from out_dir/ckpt.pt), 'gpt2*' or a Hugging Face GPT-2 folder
    # wandb logging (WANDB_MODE=offline works without an account)
    wandb_log=False,
    wandb_project='owt',
    wandb_run_name='gpt2',
    # data
    dataset='openwebtext',
    data_dir='',  # '' means data/<dataset>
    gradient_accumulation_steps=5 * 8,  # micro-steps per optimizer step, summed over all processes
    batch_size=12,  # sequences per micro-step and process
    block_size=1024,
    # model: GPTConfig's fields and defaults, except vocab_size (None: from the dataset's meta.pkl, else 50304)
    # and bias=False as in nanoGPT's train.py (a bit faster and better when training from scratch)
    **{f.name: f.default for f in fields(GPTConfig) if f.name not in ('block_size', 'vocab_size', 'bias')},
    vocab_size=None,
    bias=False,
    # AdamW
    learning_rate=6e-4,  # max learning rate
    max_iters=600000,  # optimizer steps in all
    weight_decay=1e-1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,  # clip gradients at this norm, 0 to disable
    # learning rate schedule: linear warmup, then cosine decay to min_lr
    decay_lr=True,
    warmup_iters=2000,
    lr_decay_iters=600000,  # ~ max_iters per the Chinchilla paper
    min_lr=6e-5,  # ~ learning_rate / 10 per the Chinchilla paper
    # system: 'auto' (None for compile) is decided after the overrides, from what this machine has
    backend='auto',  # 'nccl' on CUDA, 'gloo' on CPU
    device='auto',  # cuda > mps > cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype='auto',  # 'float32', 'bfloat16' or 'float16' (GradScaler); auto: bf16 where native
    compile=None,  # torch.compile the model; None: where it works and pays off (CUDA, compute capability >= 7)
    seed=1337,
)
TYPES_OF_NONE = {'vocab_size': int, 'd_ff': int, 'n_kv_head': int, 'compile': bool}
MODEL_KEYS = [f.name for f in fields(GPTConfig)]
# fields a checkpoint or pretrained model fixes; dropout alone may change, block_size may only shrink
LOCKED_KEYS = [k for k in MODEL_KEYS if k not in ('dropout', 'block_size')]
PRETRAINED = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')


# ----------------------------------------------------------------------------------------------
# distributed setup


def setup_distributed(cfg):
    """Join the torchrun process group when RANK is set. Returns (rank, local_rank, world_size)."""
    if int(os.environ.get('RANK', -1)) == -1:
        return 0, 0, 1
    rank, local_rank, world_size = int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])
    backend = cfg['backend']
    if backend == 'auto':
        backend = 'nccl' if cfg['device'].startswith('cuda') else 'gloo'
    if cfg['device'].startswith('cuda'):
        cfg['device'] = f'cuda:{local_rank}'
        torch.cuda.set_device(cfg['device'])
    dist.init_process_group(backend=backend)
    return rank, local_rank, world_size


def resolve_system(cfg, world_size):
    """Fill in the 'auto' system choices and check the ones a user gave."""
    cfg['device'] = common.resolve_device(cfg['device'])
    cfg['dtype'] = common.resolve_dtype(cfg['dtype'], cfg['device'])
    if cfg['compile'] is None:
        cfg['compile'] = common.can_compile(cfg['device'])
    if cfg['gradient_accumulation_steps'] % world_size:
        raise ValueError(f"gradient_accumulation_steps={cfg['gradient_accumulation_steps']} is not divisible by the "
                         f"{world_size} processes: make it a multiple of {world_size}")
    for key in ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_iters', 'eval_interval', 'log_interval'):
        if cfg[key] < 1:
            raise ValueError(f'{key}={cfg[key]} must be at least 1')


# ----------------------------------------------------------------------------------------------
# data


class Batches:
    """Random windows of block_size + 1 tokens from the memory-mapped token bins. Each batch is a pure
    function of (seed, rank, iteration, micro-step), so a resumed run sees exactly the batches an
    uninterrupted one would, and every process sees different ones."""

    def __init__(self, data_dir, block_size, batch_size, device, seed, rank):
        self.data_dir, self.block_size, self.batch_size = data_dir, block_size, batch_size
        self.device, self.seed, self.rank = device, seed, rank
        self.dtype = common.token_dtype(common.load_meta(data_dir))
        for split in ('train', 'val'):
            path = os.path.join(data_dir, f'{split}.bin')
            if not os.path.exists(path):
                raise FileNotFoundError(f'{path} is missing: prepare the dataset again (data/<name>/prepare.py)')
            n = os.path.getsize(path) // self.dtype.itemsize
            if n <= block_size:
                raise ValueError(f'{split}.bin in {data_dir} has {n} tokens, too few for block_size={block_size}: '
                                 f'use a smaller --block_size (at most {n - 1}) or more data')

    def tokens(self, split):
        # a fresh memmap each time: numpy keeps pages of a long-lived one in memory (a leak on big corpora)
        return np.memmap(os.path.join(self.data_dir, f'{split}.bin'), dtype=self.dtype, mode='r')

    def get(self, split, *key):
        data = self.tokens(split)
        rng = np.random.default_rng([self.seed, self.rank, *key])
        starts = rng.integers(0, len(data) - self.block_size, size=self.batch_size)
        xy = torch.from_numpy(np.stack([data[s:s + self.block_size + 1] for s in starts]).astype(np.int64))
        x, y = xy[:, :-1], xy[:, 1:]
        if self.device.startswith('cuda'):
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


def ensure_data(cfg, master_process):
    """The dataset's folder, preparing the small built-in datasets when their bins are missing."""
    data_dir = cfg['data_dir'] or os.path.join('data', cfg['dataset'])
    if not os.path.exists(os.path.join(data_dir, 'train.bin')):
        if cfg['dataset'] in ('shakespeare_char', 'shakespeare'):
            if master_process:
                import prepare
                print(f"{data_dir}/train.bin is missing: preparing {cfg['dataset']} first")
                prepare.prepare_builtin(cfg['dataset'], data_dir)
            if dist.is_initialized():
                dist.barrier()
        else:
            raise FileNotFoundError(f"no training data at {data_dir}/train.bin: prepare it first with "
                                    f"`python data/{cfg['dataset']}/prepare.py` (or `python prepare.py YOUR_TEXTS "
                                    f"--name={cfg['dataset']}` for your own corpus)")
    return data_dir


# ----------------------------------------------------------------------------------------------
# model


def check_locked(cfg, source_args, source):
    """A resumed or pretrained model keeps its architecture: a config that asks for another value of a locked
    field (a value other than the default) is an error, naming the field and both values."""
    for key in LOCKED_KEYS:
        asked, has = cfg[key], source_args.get(key, getattr(GPTConfig, key, None))  # nanoGPT's lack the modern fields
        if asked != DEFAULTS[key] and asked != has:
            raise ValueError(f'{key}={asked!r} was asked for, but {source} has {key}={has!r}: '
                             f'the architecture of {source} cannot change; drop --{key} or start with --init_from=scratch')
    if cfg['block_size'] != DEFAULTS['block_size'] and cfg['block_size'] > source_args['block_size']:
        raise ValueError(f"block_size={cfg['block_size']} is larger than the {source_args['block_size']} of {source}: "
                         'a context can be cropped, not grown')


def build_model(cfg, data_dir, meta):
    """(model, checkpoint or None) for cfg['init_from']."""
    init_from = cfg['init_from']
    if init_from == 'scratch':
        model_args = {k: cfg[k] for k in MODEL_KEYS}
        model_args['vocab_size'] = vocab_size_for(cfg, meta)
        return GPT(GPTConfig(**model_args)), None
    if init_from == 'resume':
        checkpoint = common.load_checkpoint(os.path.join(cfg['out_dir'], 'ckpt.pt'))
        check_locked(cfg, checkpoint['model_args'], 'the checkpoint')
        model = common.model_from_checkpoint(checkpoint, dropout=cfg['dropout'])
    elif init_from in PRETRAINED or os.path.isdir(init_from):
        checkpoint = None
        model = GPT.from_pretrained(init_from, dict(dropout=cfg['dropout']))
        check_locked(cfg, vars(model.config), init_from)
    else:
        raise ValueError(f"init_from={init_from!r} is not 'scratch', 'resume', one of {', '.join(PRETRAINED)}, "
                         'or a folder holding a Hugging Face GPT-2 checkpoint')
    if meta and meta['vocab_size'] > model.config.vocab_size:
        raise ValueError(f"the dataset's vocabulary ({meta['vocab_size']} tokens) does not fit the model's "
                         f'vocab_size={model.config.vocab_size}: train on data made with the model\'s tokenizer')
    if cfg['block_size'] < model.config.block_size:
        model.crop_block_size(cfg['block_size'])
    cfg['block_size'] = model.config.block_size
    return model, checkpoint


def vocab_size_for(cfg, meta):
    """The model's vocabulary: as asked, else the dataset's (BPE vocabularies padded to a multiple of 64
    for faster matmuls, as GPT-2's 50257 -> 50304), else GPT-2's padded 50304."""
    if meta is None:
        return cfg['vocab_size'] or 50304
    needed = meta['vocab_size']
    if cfg['vocab_size'] is not None:
        if cfg['vocab_size'] < needed:
            raise ValueError(f"vocab_size={cfg['vocab_size']} is smaller than the dataset's {needed} tokens: "
                             'drop --vocab_size to take it from meta.pkl')
        return cfg['vocab_size']
    return needed if meta['tokenizer'] == 'char' else -(-needed // 64) * 64


# ----------------------------------------------------------------------------------------------
# training


def get_lr(it, cfg):
    """Linear warmup (never 0, even at step 0), then cosine decay to min_lr at lr_decay_iters."""
    if not cfg['decay_lr']:
        return cfg['learning_rate']
    if it < cfg['warmup_iters']:
        return cfg['learning_rate'] * (it + 1) / (cfg['warmup_iters'] + 1)
    if it > cfg['lr_decay_iters']:
        return cfg['min_lr']
    ratio = (it - cfg['warmup_iters']) / max(1, cfg['lr_decay_iters'] - cfg['warmup_iters'])
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # from 1 down to 0
    return cfg['min_lr'] + coeff * (cfg['learning_rate'] - cfg['min_lr'])


def train_step(model, optimizer, scaler, batches, ctx, iter_num, grad_accum, grad_clip, distributed=False):
    """One optimizer step: grad_accum micro-steps of forward and backward (the GradScaler does nothing unless
    float16), clip, step, zero_grad. Returns the mean loss, on the device. bench.py times this."""
    loss_sum = torch.zeros((), device=batches.device)
    for micro_step in range(grad_accum):
        x, y = batches.get('train', 1, iter_num, micro_step)
        if distributed:
            # sync gradients only on the last micro-step (no_sync would be the official way)
            model.require_backward_grad_sync = micro_step == grad_accum - 1
        with ctx:
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
def estimate_loss(model, batches, cfg, ctx, rank, world_size):
    """Mean loss over the same eval_iters batches of each split at every eval (comparable across evals),
    shared between the processes: each evaluates its part, and the sums are all-reduced."""
    model.eval()
    out = {}
    for split in ('train', 'val'):
        total = torch.zeros(2, device=cfg['device'], dtype=torch.float64)  # (sum of losses, count)
        for k in range(rank, cfg['eval_iters'], world_size):
            x, y = batches.get(split, 2, k)
            with ctx:
                _, loss = model(x, y)
            total += torch.tensor([loss.item(), 1.0], device=total.device, dtype=total.dtype)
        if world_size > 1:
            dist.all_reduce(total)
        out[split] = (total[0] / total[1]).item()
    model.train()
    return out


def train(cfg):
    """Run training (or evaluation only) as cfg says. Returns the list of logged training losses."""
    rank, local_rank, world_size = setup_distributed(cfg)
    master_process = rank == 0
    try:
        return _train(cfg, rank, world_size, master_process)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg, rank, world_size, master_process):
    resolve_system(cfg, world_size)
    device, dtype = cfg['device'], cfg['dtype']
    grad_accum = cfg['gradient_accumulation_steps'] // world_size
    torch.manual_seed(cfg['seed'] + rank)
    if device.startswith('cuda'):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device == 'cpu':
        common.keep_freed_memory()
    ctx = common.autocast(device, dtype)

    data_dir = ensure_data(cfg, master_process)
    meta = common.load_meta(data_dir)
    model, checkpoint = build_model(cfg, data_dir, meta)
    batches = Batches(data_dir, cfg['block_size'], cfg['batch_size'], device, cfg['seed'], rank)
    model.to(device)
    model_args = {f.name: getattr(model.config, f.name) for f in fields(GPTConfig)}

    scaler = torch.amp.GradScaler(device.split(':')[0], enabled=dtype == 'float16')
    optimizer = model.configure_optimizers(cfg['weight_decay'], cfg['learning_rate'], (cfg['beta1'], cfg['beta2']),
                                           device.split(':')[0])
    iter_num, best_val_loss = 0, 1e9
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint['optimizer'])
        if checkpoint.get('scaler'):
            scaler.load_state_dict(checkpoint['scaler'])
        iter_num, best_val_loss = checkpoint['iter_num'], checkpoint['best_val_loss']
        if world_size == 1 and 'rng' in checkpoint:
            common.set_rng_state(checkpoint['rng'])
        else:  # each process needs its own dropout stream; only rank 0's was saved
            torch.manual_seed(cfg['seed'] + rank + iter_num)
    checkpoint = None  # free the memory

    tokens_per_iter = cfg['gradient_accumulation_steps'] * cfg['batch_size'] * cfg['block_size']
    if master_process:
        os.makedirs(cfg['out_dir'], exist_ok=True)
        print(f"torch {torch.__version__}, device {device}, dtype {dtype}, compile {cfg['compile']}, "
              f"world size {world_size}, data {data_dir}")
        print('config: ' + ', '.join(f'{k}={v!r}' for k, v in cfg.items()))
        print(f'model: {model.get_num_params() / 1e6:.2f}M parameters; '
              f"{tokens_per_iter:,} tokens per iteration ({grad_accum} micro-steps x {world_size} processes x "
              f"{cfg['batch_size']} x {cfg['block_size']}); from iteration {iter_num} to {cfg['max_iters']}")

    raw_model = model
    if cfg['compile']:
        if master_process:
            print('compiling the model (takes a minute)...')
        model = torch.compile(model)
    eval_model = model  # compiled, but without DDP: evaluation needs no gradient sync
    if world_size > 1:
        model = DDP(model, device_ids=[int(device.split(':')[1])] if device.startswith('cuda') else None)
    peak_flops = None
    if master_process:  # measured once here on a CPU, so that it stays out of the timed iterations
        peak_flops = device_peak_flops(device, common.DTYPES[dtype])

    metrics = open(os.path.join(cfg['out_dir'], 'metrics.jsonl'), 'a') if master_process else None
    wandb = None
    if cfg['wandb_log'] and master_process:
        import wandb
        wandb.init(project=cfg['wandb_project'], name=cfg['wandb_run_name'], config=cfg)

    def log(record):
        metrics.write(json.dumps(record) + '\n')
        metrics.flush()
        if wandb is not None:
            wandb.log(record, step=record['iter'])

    def save(losses):
        checkpoint = {
            'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(), 'model_args': model_args,
            'iter_num': iter_num, 'best_val_loss': best_val_loss, 'config': cfg,
            'rng': common.rng_state(), 'scaler': scaler.state_dict(), 'val_loss': losses['val'],
        }
        path = os.path.join(cfg['out_dir'], 'ckpt.pt')
        common.save_checkpoint(checkpoint, path)
        print(f'saved checkpoint to {path}')

    losses_logged = []
    start_iter = iter_num
    t_start = t0 = time.time()
    running_mfu = -1.0
    while True:
        if iter_num % cfg['eval_interval'] == 0 or iter_num >= cfg['max_iters'] or cfg['eval_only']:
            losses = estimate_loss(eval_model, batches, cfg, ctx, rank, world_size)
            if master_process:
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                log({'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val']})
            if not all(map(math.isfinite, losses.values())):
                raise_not_finite(iter_num, cfg, 'the eval loss')
            if master_process:
                if iter_num > start_iter and (losses['val'] < best_val_loss or cfg['always_save_checkpoint']):
                    best_val_loss = min(best_val_loss, losses['val'])
                    save(losses)
            if cfg['eval_only'] or iter_num >= cfg['max_iters']:
                break
            t0 = time.time()  # the eval's time is not the next iteration's

        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group['lr'] = lr
        loss_sum = train_step(model, optimizer, scaler, batches, ctx, iter_num, grad_accum, cfg['grad_clip'],
                              distributed=world_size > 1)
        lossf = loss_sum.item()  # once per step: cheap, and it catches a diverging run at once
        if not math.isfinite(lossf):
            raise_not_finite(iter_num, cfg, 'the training loss')
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        iter_num += 1
        local_iters = iter_num - start_iter
        if iter_num % cfg['log_interval'] == 0:
            if world_size > 1:
                loss_t = torch.tensor(lossf, device=device)
                dist.all_reduce(loss_t, op=dist.ReduceOp.AVG)
                lossf = loss_t.item()
            losses_logged.append(lossf)
            if master_process:
                if local_iters >= 5:  # let the first iterations (allocation, compilation) pass
                    mfu = raw_model.estimate_mfu(cfg['batch_size'] * grad_accum, dt, cfg['block_size'],
                                                 peak_flops=peak_flops)
                    running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
                eta = (time.time() - t_start) / local_iters * (cfg['max_iters'] - iter_num)
                print(f'iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, time {dt * 1000:.1f}ms, '
                      f'mfu {running_mfu * 100:.1f}%, eta {format_seconds(eta)}')
                log({'iter': iter_num, 'loss': lossf, 'lr': lr, 'ms': dt * 1000, 'mfu': running_mfu})
    if master_process:
        print(f'done in {format_seconds(time.time() - t_start)}; best val loss {best_val_loss:.4f}')
        metrics.close()
        if wandb is not None:
            wandb.finish()
    return losses_logged


def raise_not_finite(iter_num, cfg, what):
    raise ValueError(f"{what} became NaN or infinite at iteration {iter_num}; stopped without saving, so "
                     f"{cfg['out_dir']}/ckpt.pt still holds the last good state: lower --learning_rate, "
                     f"use --dtype=bfloat16 instead of float16, or check the data, then --init_from=resume")


def format_seconds(s):
    s = int(s)
    return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s' if s >= 60 else f'{s}s'


def main(argv=None):
    cfg = configure(DEFAULTS, sys.argv[1:] if argv is None else argv, TYPES_OF_NONE)
    return train(cfg)


if __name__ == '__main__':
    common.cli(main)
