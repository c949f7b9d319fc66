"""
Train a GPT: from scratch, resuming a run, or finetuning OpenAI's GPT-2. One process or many.

    python train.py config/train_shakespeare_char_cpu.py      # a laptop CPU, about a minute
    python train.py config/train_shakespeare_char.py          # one GPU
    python train.py config/train_shakespeare_char.py --init_from=resume --max_iters=6000
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
    torchrun --standalone --nproc_per_node=8 train.py config/finetune_shakespeare.py --parallel=fsdp
    python train.py --help                                    # every key and its default

Writes out_dir/ckpt.pt (atomically; under --parallel=fsdp the folder of shards out_dir/ckpt.dcp) and
out_dir/metrics.jsonl (one JSON object per logged iteration).
"""

import math
import os
import sys
import time
from dataclasses import fields
from types import MappingProxyType

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import dataset
import hellaswag
import machine
import parallel
from atomic import run_lock
from configurator import cli, configure
from model import GPTConfig
from runlog import Log, format_seconds
from training import configure_optimizer, estimate_loss, get_lr, set_lr, tokens_per_iter, train_step

# default config values: GPT-2 (124M) on OpenWebText, as nanoGPT
DEFAULTS = dict(
    # I/O
    out_dir='out',
    eval_interval=2000,
    log_interval=1,
    eval_iters=200,
    eval_only=False,  # evaluate once, print and exit (writes nothing)
    hellaswag_interval=0,  # score HellaSwag (GPT-2 BPE models) every this many iterations; 0: never
    hellaswag_data='',  # hellaswag_val.jsonl; '' downloads it once into a cache folder (see hellaswag.py)
    always_save_checkpoint=True,  # save at every eval, not only when val loss improves
    init_from='scratch',  # 'scratch', 'resume' (from out_dir/ckpt.pt), 'gpt2*' or a Hugging Face GPT-2 folder
    overwrite=False,  # start a new run in an out_dir that holds one: its ckpt.pt and metrics.jsonl are replaced
    # wandb logging (WANDB_MODE=offline works without an account)
    wandb_log=False,
    wandb_project='owt',
    wandb_run_name='gpt2',
    # data
    dataset='openwebtext',
    data_dir='',  # '' means data/<dataset>
    gradient_accumulation_steps=5 * 8,  # micro-steps per optimizer step, summed over all processes
    batch_size=12,  # sequences per micro-step and process
    # model: GPTConfig's fields and defaults, except vocab_size (None: from the dataset's meta.pkl, else 50304)
    # and bias=False as in nanoGPT's train.py (a bit faster and better when training from scratch).
    # A resumed or pretrained model keeps its own (block_size may shrink, dropout may change).
    **{f.name: f.default for f in fields(GPTConfig) if f.name not in ('vocab_size', 'bias')},
    vocab_size=None,
    bias=False,
    # optimizer: 'adamw', or 'muon' (Muon for the weight matrices inside the blocks, AdamW for the rest)
    optimizer='adamw',
    learning_rate=6e-4,  # max learning rate (AdamW's; with optimizer='muon', of the embeddings, lm_head and norms)
    max_iters=600000,  # optimizer steps in all
    weight_decay=1e-1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,  # clip gradients at this norm, 0 to disable
    muon_lr=0.02,  # Muon's max learning rate; the schedule scales it as it scales learning_rate
    muon_momentum=0.95,
    muon_weight_decay=0.0,  # decoupled, as AdamW's: the matrices shrink by muon_lr * muon_weight_decay per step
    # learning rate schedule: linear warmup, then 'cosine' decay to min_lr, or 'wsd' (warmup-stable-decay):
    # constant, then linear decay to min_lr over the last decay_fraction of lr_decay_iters
    decay_lr=True,
    lr_schedule='cosine',
    decay_fraction=0.2,
    warmup_iters=2000,
    lr_decay_iters=600000,  # ~ max_iters per the Chinchilla paper
    min_lr=6e-5,  # ~ learning_rate / 10 per the Chinchilla paper
    # how the model is spread over torchrun's processes (parallel.py)
    parallel='ddp',  # 'ddp': each process holds the whole model; 'fsdp': each holds a shard (FSDP2, needs torchrun)
    activation_checkpointing=False,  # recompute each block in backward: far less activation memory, ~1/3 more compute
    cpu_offload=False,  # fsdp: keep parameters, gradients and optimizer state in host memory (slow; fits big models)
    # system: decided once, by machine.setup, from what this machine has
    backend='auto',  # 'nccl' on CUDA, 'gloo' on CPU
    device='auto',  # cuda > mps > cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype='auto',  # 'float32', 'bfloat16' or 'float16' (GradScaler); auto: bf16 where native
    compile=None,  # torch.compile the model; None: where it works and pays off (CUDA, compute capability >= 7)
    peak_flops=0.0,  # the device's peak FLOP/s for MFU; 0: known GPUs from a table, CPUs measured, else no MFU
    seed=1337,
)
TYPES_OF_NONE = {'vocab_size': int, 'd_ff': int, 'n_kv_head': int, 'compile': bool}


def main(argv=None):
    """Train as the command line says; returns the logged training losses."""
    given = set()
    cfg = configure(DEFAULTS, sys.argv[1:] if argv is None else argv, TYPES_OF_NONE, given)
    check_settings(cfg)
    m = machine.setup(cfg['device'], cfg['dtype'], cfg['compile'], cfg['backend'])
    try:
        parallel.check(cfg['parallel'], cfg['cpu_offload'], m)
        # rank 0 holds out_dir for the job: the others cannot write without it (every save waits for it), and
        # torchrun ends them when it dies
        with run_lock(cfg['out_dir'], hold=m.master and not cfg['eval_only']):
            losses = train(cfg, given, m)
    except BaseException as e:
        machine.teardown(finished=False)
        raise out_of_memory(m) if isinstance(e, torch.OutOfMemoryError) else e
    machine.teardown()
    return losses


def out_of_memory(m):
    return ValueError(f'out of memory on {m.device}: the model, its optimizer state and the activations of one '
                      'micro-step do not fit; lower --batch_size (raising --gradient_accumulation_steps to keep the '
                      'tokens per step) or --block_size. `python sizing.py` with the same arguments shows the need')


def check_settings(cfg):
    """Every number that has a meaningful range, checked before anything runs."""
    for key in ('batch_size', 'gradient_accumulation_steps', 'eval_iters', 'eval_interval', 'log_interval'):
        if cfg[key] < 1:
            raise ValueError(f'{key}={cfg[key]} must be at least 1')
    for key in ('max_iters', 'warmup_iters', 'lr_decay_iters', 'weight_decay', 'grad_clip', 'learning_rate',
                'min_lr', 'peak_flops', 'seed', 'hellaswag_interval'):
        if cfg[key] < 0:
            raise ValueError(f'{key}={cfg[key]} must be 0 or more' + (' (0 disables clipping)' if key == 'grad_clip' else ''))
    for key in ('beta1', 'beta2', 'muon_momentum'):
        if not 0 <= cfg[key] < 1:
            raise ValueError(f'{key}={cfg[key]} must be in [0, 1), e.g. 0.9 / 0.95')
    for key, choices in (('optimizer', ('adamw', 'muon')), ('lr_schedule', ('cosine', 'wsd'))):
        if cfg[key] not in choices:
            raise ValueError(f"{key}={cfg[key]!r} is not one of {', '.join(choices)}")
    if not 0 < cfg['decay_fraction'] <= 1:
        raise ValueError(f"decay_fraction={cfg['decay_fraction']} must be in (0, 1], e.g. 0.2: the last 20% of the steps")
    if cfg['optimizer'] == 'muon' and (cfg['muon_lr'] < 0 or cfg['muon_weight_decay'] < 0 or not cfg['learning_rate']):
        raise ValueError(f"optimizer='muon' needs muon_lr >= 0, muon_weight_decay >= 0 and learning_rate > 0 (the "
                         f"schedule scales muon_lr by lr / learning_rate), not {cfg['muon_lr']}, "
                         f"{cfg['muon_weight_decay']} and {cfg['learning_rate']}")


def train(cfg, given, m):
    if cfg['gradient_accumulation_steps'] % m.world_size:
        raise ValueError(f"gradient_accumulation_steps={cfg['gradient_accumulation_steps']} is not divisible by the "
                         f"{m.world_size} processes: make it a multiple of {m.world_size}")
    torch.manual_seed(cfg['seed'])  # the same initial weights on every process (FSDP draws each shard's part)
    data_dir = dataset.ensure_data(cfg['dataset'], cfg['data_dir'], m.master)
    meta = dataset.load_meta(data_dir)
    existing = checkpoint.latest(cfg['out_dir'])
    if cfg['init_from'] != 'resume' and not cfg['eval_only'] and not cfg['overwrite'] and existing:
        raise ValueError(f'{existing} holds a run already: continue it with --init_from=resume, start over in its '
                         'place with --overwrite=True, or choose another --out_dir')
    model, ckpt = checkpoint.init_model(cfg, given, meta, m)
    if ckpt is not None:
        dataset.check_fingerprint(ckpt['config'].get('tokenizer'), meta, data_dir, checkpoint.latest(cfg['out_dir']),
                                  'resume with the --data_dir it was trained on, or start over with --overwrite=True')
    model.activation_checkpointing = cfg['activation_checkpointing']
    if m.rank:
        torch.manual_seed(cfg['seed'] + m.rank)  # each process its own dropout masks
    # the run's settings, final from here on: the model's real architecture and what the machine decided
    cfg = MappingProxyType(dict(cfg, **checkpoint.model_args(model.config, full=True), data_dir=data_dir,
                                device=m.device, dtype=m.dtype, compile=m.compile, tokenizer=dataset.fingerprint(meta)))
    batches = dataset.Batches(data_dir, meta, cfg['block_size'], cfg['batch_size'], m.device, cfg['seed'],
                              cfg['vocab_size'])
    if not parallel.is_sharded(model):
        model.to(m.device)
    scaler = torch.amp.GradScaler(m.device_type, enabled=m.dtype == 'float16')
    optimizer = configure_optimizer(model, cfg, m.device)
    iter_num, best_val_loss = 0, 1e9
    if ckpt is not None:
        iter_num, best_val_loss = restore(ckpt, model, optimizer, scaler, cfg, m)
    ckpt = None  # free the memory
    grad_accum = cfg['gradient_accumulation_steps'] // m.world_size
    if m.master:
        print(f"torch {torch.__version__}, device {m.device}, dtype {m.dtype}, compile {m.compile}, "
              f"world size {m.world_size} ({cfg['parallel']}), data {data_dir}")
        print('config: ' + ', '.join(f'{k}={v!r}' for k, v in cfg.items()))
        print(f"model: {model.get_num_params() / 1e6:.2f}M parameters; {tokens_per_iter(cfg):,} tokens per iteration "
              f"({grad_accum} micro-steps x {m.world_size} processes x {cfg['batch_size']} x {cfg['block_size']}); "
              f"from iteration {iter_num} to {cfg['max_iters']}")
    hellaswag_task = load_hellaswag(cfg, meta, m) if cfg['hellaswag_interval'] else None
    log = Log(cfg, m, iter_num)
    try:
        return train_loop(model, optimizer, scaler, batches, cfg, m, log, iter_num, best_val_loss, hellaswag_task)
    finally:
        log.close()


def load_hellaswag(cfg, meta, m):
    """(tokenizer, examples) for HellaSwag during training: the master fetches the data, the others wait and read."""
    tokenizer = dataset.Tokenizer(meta)
    hellaswag.check_tokenizer(tokenizer)
    if m.master:
        examples = hellaswag.load_examples(cfg['hellaswag_data'] or None)
    if m.world_size > 1:
        torch.distributed.barrier()
    if not m.master:
        examples = hellaswag.load_examples(cfg['hellaswag_data'] or None)
    return tokenizer, examples


def restore(ckpt, model, optimizer, scaler, cfg, m):
    """Put the optimizer, the GradScaler and every process's random generators back as they were saved."""
    trained_with = ckpt['config'].get('optimizer', 'adamw')  # nanoGPT's checkpoints: AdamW
    if trained_with != cfg['optimizer']:
        raise ValueError(f"the checkpoint was trained with optimizer={trained_with!r}, whose state cannot go on with "
                         f"{cfg['optimizer']!r}: resume with --optimizer={trained_with}")
    if not checkpoint.load_optimizer(ckpt, model, optimizer) and m.master:
        print(f"note: {cfg['out_dir']}'s checkpoint has no optimizer state (a shared copy?): the optimizer starts fresh")
    if ckpt.get('scaler'):
        scaler.load_state_dict(ckpt['scaler'])
    states = ckpt.get('rng')
    states = [states] if isinstance(states, dict) else states or []  # one dict: this project's first version
    if len(states) == m.world_size:
        checkpoint.set_rng_state(states[m.rank])
    else:  # another number of processes: the dropout streams cannot continue as they were
        torch.manual_seed(cfg['seed'] + m.rank + ckpt.get('iter_num', 0))
        if m.master:
            print(f'note: the checkpoint has the random state of {len(states)} processes, this run has '
                  f'{m.world_size}: dropout draws new random numbers from here')
    return ckpt.get('iter_num', 0), ckpt.get('best_val_loss', 1e9)


def train_loop(model, optimizer, scaler, batches, cfg, m, log, iter_num, best_val_loss, hellaswag_task):
    raw_model = model
    if m.compile:
        if m.master:
            print('compiling the model (takes a minute)...')
        model = torch.compile(model)
    eval_model = model  # compiled, but without DDP: evaluation needs no gradient sync
    if m.world_size > 1 and not parallel.is_sharded(model):
        model = DDP(model, device_ids=[m.local_rank] if m.device_type == 'cuda' else None)
    grad_accum = cfg['gradient_accumulation_steps'] // m.world_size
    start_iter, losses_logged = iter_num, []
    t_start = t0 = time.time()
    while True:
        evaluated = iter_num % cfg['eval_interval'] == 0 or iter_num >= cfg['max_iters'] or cfg['eval_only']
        if evaluated:
            losses = estimate_loss(eval_model, batches, m, cfg['eval_iters'])
            log.eval(iter_num, losses)
            if not all(map(math.isfinite, losses.values())):
                raise not_finite(iter_num, cfg, 'the eval loss')
            if not cfg['eval_only'] and iter_num > start_iter and (losses['val'] < best_val_loss
                                                                   or cfg['always_save_checkpoint']):
                best_val_loss = min(best_val_loss, losses['val'])
                save(raw_model, optimizer, scaler, cfg, m, iter_num, best_val_loss, losses['val'])
        if hellaswag_task and (iter_num % cfg['hellaswag_interval'] == 0 or iter_num >= cfg['max_iters']):
            log.hellaswag(iter_num, hellaswag.evaluate(raw_model, *hellaswag_task, m))
            evaluated = True
        if cfg['eval_only'] or iter_num >= cfg['max_iters']:
            break
        if evaluated:
            t0 = time.time()  # the evaluations' time is not the next iteration's
        lr = get_lr(iter_num, cfg['learning_rate'], cfg['min_lr'], cfg['warmup_iters'], cfg['lr_decay_iters'],
                    cfg['decay_lr'], cfg['lr_schedule'], cfg['decay_fraction'])
        set_lr(optimizer, lr, cfg)
        loss = train_step(model, optimizer, scaler, batches, m, iter_num, grad_accum, cfg['grad_clip'])
        if m.world_size > 1:
            torch.distributed.all_reduce(loss, op=torch.distributed.ReduceOp.AVG)
        lossf = loss.item()  # once per step: cheap, and it catches a diverging run at once
        if not math.isfinite(lossf):
            raise not_finite(iter_num, cfg, 'the training loss')
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        iter_num += 1
        if iter_num % cfg['log_interval'] == 0:
            losses_logged.append(lossf)
            eta = (time.time() - t_start) / (iter_num - start_iter) * (cfg['max_iters'] - iter_num)
            mfu = raw_model.estimate_mfu(cfg['batch_size'] * grad_accum, dt, log.peak_flops) \
                if log.peak_flops and iter_num - start_iter >= 5 else None  # after allocation and compilation
            log.step(iter_num, lossf, lr, dt, mfu, eta)
    if m.master:
        peak = m.peak_memory()
        print(f'done in {format_seconds(time.time() - t_start)}; best val loss {best_val_loss:.4f}'
              + (f'; peak memory of this process {peak / 1e9:.2f} GB' if peak else ''))
    return losses_logged


def save(raw_model, optimizer, scaler, cfg, m, iter_num, best_val_loss, val_loss):
    """out_dir/ckpt.pt from rank 0, or, under FSDP, out_dir/ckpt.dcp from every process's shards."""
    state = {
        'model_args': checkpoint.model_args(raw_model.config), 'iter_num': iter_num, 'best_val_loss': best_val_loss,
        'config': dict(cfg), 'rng': checkpoint.all_rng_states(m.world_size), 'scaler': scaler.state_dict(),
        'val_loss': val_loss,
    }
    if parallel.is_sharded(raw_model):
        checkpoint.save_sharded(raw_model, optimizer, state, cfg['out_dir'], m)
        path = os.path.join(cfg['out_dir'], checkpoint.SHARDED)
    elif m.master:
        path = os.path.join(cfg['out_dir'], checkpoint.CKPT)
        checkpoint.save({'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(), **state}, path)
        checkpoint.remove_sharded(cfg['out_dir'])  # the older checkpoint of an FSDP run this one resumed
    if m.master:
        print(f'saved checkpoint to {path}')


def not_finite(iter_num, cfg, what):
    return ValueError(f"{what} became NaN or infinite at iteration {iter_num}; stopped without saving, so "
                      f"{cfg['out_dir']}/ckpt.pt still holds the last good state: lower --learning_rate, "
                      f"use --dtype=bfloat16 instead of float16, or check the data, then --init_from=resume")


if __name__ == '__main__':
    cli(main)
