"""
What a training run is, for train.py and bench.py alike: its settings (DEFAULTS, nanoGPT's keys and values:
GPT-2 124M on OpenWebText), the optimizer, the learning rate schedule, one optimizer step and the evaluation.
"""

import math
import signal
from contextlib import contextmanager
from dataclasses import fields

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

from model import GPTConfig

DEFAULTS = dict(
    # I/O
    out_dir='out',
    eval_interval=2000,
    checkpoint_interval_minutes=30.0,  # also save this often between evaluations, bounding a crash's loss; 0: never
    log_interval=1,
    eval_iters=200,
    eval_only=False,  # evaluate once, print and exit (writes nothing)
    hellaswag_interval=0,  # score HellaSwag (GPT-2 BPE models) every this many iterations; 0: never
    hellaswag_data='',  # hellaswag_val.jsonl; '' downloads it once into a cache folder (see hellaswag.py)
    always_save_checkpoint=True,  # save at every eval, not only when val loss improves
    init_from='scratch',  # 'scratch', 'resume', 'auto' (resume where out_dir has a checkpoint), 'gpt2*', an HF folder
    overwrite=False,  # start a new run in an out_dir that holds one: its ckpt.pt and metrics.jsonl are replaced
    wandb_log=False, wandb_project='owt', wandb_run_name='gpt2',  # wandb (WANDB_MODE=offline needs no account)
    # data
    dataset='openwebtext',
    data_dir='',  # '' means data/<dataset>
    gradient_accumulation_steps=5 * 8,  # micro-steps per optimizer step, summed over all processes
    batch_size=12,  # sequences per micro-step and process
    # model: GPTConfig's fields and defaults, except vocab_size (None: from the dataset's meta.pkl, else 50304)
    # and bias=False as in nanoGPT's train.py (a bit faster and better when training from scratch).
    # A resumed or pretrained model keeps its own (block_size may shrink, dropout may change).
    **{f.name: f.default for f in fields(GPTConfig) if f.name not in ('vocab_size', 'bias')},
    vocab_size=None, bias=False,
    # optimizer: 'adamw', or 'muon' (Muon for the weight matrices inside the blocks, AdamW for the rest)
    optimizer='adamw',
    learning_rate=6e-4,  # max learning rate (AdamW's; with optimizer='muon', of the embeddings, lm_head and norms)
    max_iters=600000,  # optimizer steps in all
    weight_decay=1e-1,
    beta1=0.9, beta2=0.95,
    grad_clip=1.0,  # clip gradients at this norm, 0 to disable
    muon_lr=0.02,  # Muon's max learning rate; the schedule scales it as it scales learning_rate
    muon_momentum=0.95,
    muon_weight_decay=0.0,  # decoupled, as AdamW's: the matrices shrink by muon_lr * muon_weight_decay per step
    # learning rate schedule: linear warmup, then 'cosine' decay to min_lr, or 'wsd' (warmup-stable-decay):
    # constant, then linear decay to min_lr over the last decay_fraction of lr_decay_iters
    decay_lr=True, lr_schedule='cosine',
    decay_fraction=0.2,
    warmup_iters=2000,
    lr_decay_iters=600000,  # ~ max_iters per the Chinchilla paper
    min_lr=6e-5,  # ~ learning_rate / 10 per the Chinchilla paper
    # how the model is spread over torchrun's processes (parallel.py)
    parallel='ddp',  # 'ddp': each process holds the whole model; 'fsdp': each holds a shard (FSDP2, needs torchrun)
    activation_checkpointing=False,  # recompute each block in backward: far less activation memory, ~1/3 more compute
    cpu_offload=False,  # fsdp: keep parameters, gradients and optimizer state in host memory (slow; fits big models)
    # LoRA (lora.py): only adapters of rank lora_rank (0: off) on lora_targets train, and are saved; the base is frozen
    lora_rank=0, lora_alpha=16.0, lora_dropout=0.0, lora_targets='attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj',
    lora_base_dtype='auto',  # the frozen base's dtype; 'auto': the autocast dtype (bfloat16, float16), else float32
    # system: decided once, by machine.setup, from what this machine has
    backend='auto',  # 'nccl' on CUDA, 'gloo' on CPU
    device='auto',  # cuda > mps > cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype='auto',  # 'float32', 'bfloat16' or 'float16' (GradScaler); auto: bf16 where native
    compile=None,  # torch.compile the model; None: where it works and pays off (CUDA, compute capability >= 7)
    peak_flops=0.0,  # the device's peak FLOP/s for MFU; 0: known GPUs from a table, CPUs measured, else no MFU
    seed=1337,
)
TYPES_OF_NONE = {'vocab_size': int, 'd_ff': int, 'n_kv_head': int, 'head_size': int, 'compile': bool}
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal, saved; the same command continues it (init_from='auto')
CHOICES = {'optimizer': ('adamw', 'muon'), 'lr_schedule': ('cosine', 'wsd'), 'parallel': ('ddp', 'fsdp')}


def setting_problems(cfg, keys=None):
    """Every setting (of `keys`, default all) outside its range, as a sentence that names it, for every script."""
    keys = set(DEFAULTS if keys is None else keys)
    at_least = {k: 1 for k in ('batch_size', 'gradient_accumulation_steps', 'eval_iters', 'eval_interval', 'log_interval')}
    at_least.update({k: 0 for k in ('max_iters', 'warmup_iters', 'lr_decay_iters', 'weight_decay', 'grad_clip',
                                    'learning_rate', 'min_lr', 'peak_flops', 'seed', 'hellaswag_interval',
                                    'checkpoint_interval_minutes')})
    wording = {1: 'must be at least 1', 0: 'must be 0 or more', 'grad_clip': 'must be 0 or more (0 disables clipping)',
               'peak_flops': 'must be positive (FLOP/s, e.g. 989e12), or 0 to measure it'}
    out = [f'{k}={cfg[k]} {wording.get(k, wording[least])}'
           for k, least in at_least.items() if k in keys and cfg[k] is not None and cfg[k] < least]
    out += [f'{k}={cfg[k]} must be in [0, 1), e.g. 0.9 / 0.95'
            for k in ('beta1', 'beta2', 'muon_momentum') if k in keys and not 0 <= cfg[k] < 1]
    out += [f"{k}={cfg[k]!r} is not one of {', '.join(choices)}"
            for k, choices in CHOICES.items() if k in keys and cfg[k] not in choices]
    if 'decay_fraction' in keys and not 0 < cfg['decay_fraction'] <= 1:
        out.append(f"decay_fraction={cfg['decay_fraction']} must be in (0, 1], e.g. 0.2: the last 20% of the steps")
    if 'optimizer' in keys and cfg['optimizer'] == 'muon' and (cfg['muon_lr'] < 0 or cfg['muon_weight_decay'] < 0
                                                               or not cfg['learning_rate']):
        out.append(f"optimizer='muon' needs muon_lr >= 0, muon_weight_decay >= 0 and learning_rate > 0 (the "
                   f"schedule scales muon_lr by lr / learning_rate), not {cfg['muon_lr']}, "
                   f"{cfg['muon_weight_decay']} and {cfg['learning_rate']}")
    if 'lora_rank' in keys and cfg['lora_rank']:
        import lora  # LoRA runs only
        out += lora.setting_problems(cfg)
    return out


def configure_optimizer(model, cfg, machine):
    """nanoGPT's AdamW (weight decay on 2-D tensors only), or Muon for the matrices in the blocks (muon.py)."""
    if cfg['optimizer'] == 'muon':
        import muon  # read by Muon runs only
        return muon.configure(model, cfg, machine)
    betas = (cfg['beta1'], cfg['beta2'])
    return model.configure_optimizers(cfg['weight_decay'], cfg['learning_rate'], betas, machine.device_type)


class Schedule:
    """The learning rate of each step: a linear warmup (never 0, even at step 0), then 'cosine' or 'wsd' down to
    min_lr at lr_decay_iters (see DEFAULTS); decay_lr=False: constant."""

    def __init__(self, cfg):
        self.cfg = cfg

    def lr(self, it):
        c = self.cfg
        if not c['decay_lr']:
            return c['learning_rate']
        if it < c['warmup_iters']:
            return c['learning_rate'] * (it + 1) / (c['warmup_iters'] + 1)
        if it > c['lr_decay_iters']:
            return c['min_lr']
        if c['lr_schedule'] == 'wsd':
            decay_start = c['lr_decay_iters'] * (1 - c['decay_fraction'])
            coeff = min(1.0, (c['lr_decay_iters'] - it) / max(1, c['lr_decay_iters'] - decay_start))  # 1, then to 0
        else:
            ratio = (it - c['warmup_iters']) / max(1, c['lr_decay_iters'] - c['warmup_iters'])
            coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # from 1 down to 0
        return c['min_lr'] + coeff * (c['learning_rate'] - c['min_lr'])

    def apply(self, optimizer, it):
        """Set every param group's lr for step `it` (Muon's muon_lr scaled alike) and return the scheduled lr."""
        lr = self.lr(it)
        for group in optimizer.param_groups:
            group['lr'] = self.cfg['muon_lr'] * lr / self.cfg['learning_rate'] if group.get('muon') else lr
        return lr


def tokens_per_iter(cfg):
    return cfg['gradient_accumulation_steps'] * cfg['batch_size'] * cfg['block_size']


def is_sharded(model):
    """Whether the model, compiled or not, is an FSDP one (parallel.py)."""
    return isinstance(getattr(model, '_orig_mod', model), FSDPModule)


def train_step(model, optimizer, scaler, batches, iter_num, cfg, machine, measure_updates=False):
    """One optimizer step: this process's micro-steps of forward and backward, clip, step, zero_grad; returns its
    mean loss, the gradient norm before clipping and, if measure_updates (not under FSDP), each param group's update
    to weight ratio (else None). Micro-steps are numbered over all processes: the batches do not depend on the
    process count."""
    micro_steps = cfg['gradient_accumulation_steps'] // machine.world_size
    answers = batches.answer_tokens(iter_num, cfg['gradient_accumulation_steps'])  # chat data's; None: all count
    loss_sum = torch.zeros((), device=machine.device)
    for micro_step in range(micro_steps):
        x, y = batches.train_batch(iter_num, machine.rank * micro_steps + micro_step)
        if machine.world_size > 1:  # average the gradients across processes after the last micro-step only
            last = micro_step == micro_steps - 1
            if is_sharded(model):
                model.set_requires_gradient_sync(last)
            else:
                model.require_backward_grad_sync = last  # DDP's no_sync
        with machine.autocast():
            _, loss = model(x, y)
            if answers is None:
                loss = loss / micro_steps  # the gradients add up over the micro-steps: take their mean
            else:  # the mean over the answer tokens of the whole step, on all processes (whose gradients DDP averages)
                loss = loss * ((y != -1).sum() * machine.world_size / answers)
        loss_sum += loss.detach()
        scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # the norm of the true gradients (a no-op unless float16); grad_clip 0: not clipped
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg['grad_clip'] or math.inf)
    grad_norm = grad_norm.full_tensor() if is_sharded(model) else grad_norm  # FSDP: each process holds a part
    weights = [[p.detach().clone() for p in g['params']] for g in optimizer.param_groups] \
        if measure_updates and not is_sharded(model) else None  # a copy while the activations' memory is free
    scaler.step(optimizer)  # the GradScaler does nothing unless float16
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    ratios = weights and [update_ratio(before, g['params']) for before, g in zip(weights, optimizer.param_groups)]
    return loss_sum, grad_norm, ratios


def update_ratio(before, params):
    """The norm of a param group's change in this step over the norm of its weights before it (all tensors as one)."""
    if not before:  # an empty group (LoRA's: its adapters are all matrices)
        return None
    change = torch.stack([(p.detach() - w).float().norm() for p, w in zip(params, before)]).norm()
    return (change / torch.stack([w.float().norm() for w in before]).norm()).item()


@contextmanager
def stop_signals():
    """While training, SIGTERM (a scheduler's stop, torchrun's shutdown) or SIGUSR1 (SLURM's warning ahead of a
    preemption) is appended to the list yielded: the run saves at the end of its step and exits with EXIT_PREEMPTED."""
    asked = []
    before = {s: signal.signal(s, lambda signum, _: asked.append(signal.Signals(signum).name))
              for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield asked
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def my_share(n, rank, world_size, model):
    """The numbers k of this process's share of n items (k % world_size == rank); under FSDP, whose processes
    gather parameters together, padded to equal shares with k >= n (the caller repeats item n - 1, discarded)."""
    padded = -(-n // world_size) * world_size if is_sharded(model) else n
    return range(rank, padded, world_size)


@torch.no_grad()
def estimate_loss(model, batches, machine, eval_iters, splits=('train', 'val')):
    """Mean loss over the same eval_iters batches of each split, shared between the processes and summed in one
    order: the same model gives the same value, to the last bit, on any number of processes; and bits per byte."""
    model.eval()
    out = {}
    for split in splits:
        losses = torch.zeros(3, eval_iters, device=machine.device, dtype=torch.float64)  # nats, bytes, share counted
        for k in my_share(eval_iters, machine.rank, machine.world_size, model):
            x, y = batches.eval_batch(split, min(k, eval_iters - 1))
            with machine.autocast():
                _, loss = model(x, y)
            if k < eval_iters:
                counted = (y != -1).double()  # 1 but for the prompts and padding of chat data (chat_data.py)
                losses[:, k] = torch.stack((loss.double() * counted.mean(), (batches.token_bytes[y] * counted).mean(),
                                            counted.mean()))
        if machine.world_size > 1:
            dist.all_reduce(losses)  # each entry is set by one process, 0 on the others: the sum is exact
        out[split] = losses[0].sum().item() / losses[2].sum().item()  # the mean over the targets that count
        if losses[1].sum() > 0:  # bits per byte: the nats of the targets over ln 2 x their UTF-8 bytes
            out[f'{split}_bpb'] = (losses[0].sum() / losses[1].sum()).item() / math.log(2)
    model.train()
    return out
