"""
Train a GPT: from scratch, resuming a run, or finetuning OpenAI's GPT-2. One process or many.

    python train.py config/train_shakespeare_char_cpu.py      # a laptop CPU, about a minute
    python train.py config/train_shakespeare_char.py          # one GPU
    python train.py config/train_shakespeare_char.py --init_from=resume --max_iters=6000
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
    torchrun --standalone --nproc_per_node=8 train.py config/finetune_shakespeare.py --parallel=fsdp
    python train.py --help                                    # every key and its default

The keys and their defaults (nanoGPT's: GPT-2 124M on OpenWebText) are training.DEFAULTS. The loop below evaluates,
saves, sets the learning rate and takes a step; the step itself (micro-steps of forward and backward, clip, the
optimizer's step) is training.train_step. Writes out_dir/ckpt.pt (atomically; under --parallel=fsdp the folder
of shards out_dir/ckpt.dcp) and out_dir/metrics.jsonl (one JSON object per logged iteration).
"""

import contextlib
import math
import os
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import dataset
import machine as machines
from atomic import run_lock
from configurator import cli, configure
from runlog import Log, format_seconds
from training import (DEFAULTS, EXIT_PREEMPTED, TYPES_OF_NONE, Schedule, configure_optimizer, estimate_loss,
                      is_sharded, setting_problems, stop_signals, tokens_per_iter, train_step)


def main(argv=None):
    """Train as the command line says; returns the logged training losses."""
    cfg = configure(DEFAULTS, sys.argv[1:] if argv is None else argv, TYPES_OF_NONE)
    problems = setting_problems(cfg)
    if problems:
        raise ValueError('; '.join(problems))
    machine = machines.setup(cfg.device, cfg.dtype, cfg.compile, cfg.backend, cfg.peak_flops)
    try:
        if cfg.parallel == 'fsdp' or cfg.cpu_offload:
            import parallel
            parallel.check(cfg.parallel, cfg.cpu_offload, machine)
        # rank 0 holds out_dir for the job: the others write only in the saves, which wait for it
        with run_lock(cfg.out_dir, hold=machine.master and not cfg.eval_only):
            losses = train(cfg, machine)
    except BaseException as e:
        machines.teardown(finished=False)
        if isinstance(e, torch.OutOfMemoryError):
            raise ValueError(f'out of memory on {machine.device}: the model, its optimizer state and the activations '
                             'of one micro-step do not fit; lower --batch_size (raising --gradient_accumulation_steps '
                             'to keep the tokens per step) or --block_size. `python sizing.py` with the same '
                             'arguments shows the need')
        raise
    machines.teardown()
    return losses


def train(cfg, machine):
    if cfg.gradient_accumulation_steps % machine.world_size:
        raise ValueError(f'gradient_accumulation_steps={cfg.gradient_accumulation_steps} is not divisible by the '
                         f'{machine.world_size} processes: make it a multiple of {machine.world_size}')
    torch.manual_seed(cfg.seed)  # the same initial weights on every process (FSDP draws each shard's part)
    data_dir = dataset.folder(cfg.dataset, cfg.data_dir)
    if machine.world_size > 1:
        import cluster  # torchrun's concerns: a shared out_dir, which processes prepare the data
        cluster.prepare(cfg.dataset, data_dir, cfg.out_dir, machine)
    elif not os.path.exists(os.path.join(data_dir, 'train.bin')):
        import corpus  # writes the bins of a built-in dataset (Tiny Shakespeare) the first time
        corpus.prepare_missing(cfg.dataset, data_dir)
    meta = dataset.load_meta(data_dir)
    existing = checkpoint.find_checkpoint(cfg.out_dir)
    cfg = cfg.replace(init_from=checkpoint.resolved(cfg.init_from, cfg.out_dir))  # 'auto': 'resume' or 'scratch'
    if cfg.init_from != 'resume' and not cfg.eval_only and not cfg.overwrite and existing:
        raise ValueError(f'{existing} holds a run already: continue it with --init_from=resume, start over in its '
                         'place with --overwrite=True, or choose another --out_dir')
    model, ckpt = checkpoint.init_model(cfg, meta, machine)
    if ckpt is not None:
        dataset.check_fingerprint(ckpt['config'].get('tokenizer'), meta, data_dir, existing,
                                  'resume with the --data_dir it was trained on, or start over with --overwrite=True')
    model.activation_checkpointing = cfg.activation_checkpointing
    if machine.rank:
        torch.manual_seed(cfg.seed + machine.rank)  # each process its own dropout masks
    # the run's settings, final from here on: the model's real architecture and what the machine decided
    cfg = cfg.replace(**checkpoint.model_args(model.config, full=True), data_dir=data_dir, device=machine.device,
                      dtype=machine.dtype, compile=machine.compile, tokenizer=dataset.fingerprint(meta))
    batches = dataset.batches(data_dir, meta, cfg.block_size, cfg.batch_size, machine.device, cfg.seed, cfg.vocab_size)
    if not is_sharded(model):
        model.to(machine.device)
    scaler = torch.amp.GradScaler(machine.device_type, enabled=machine.dtype == 'float16')
    optimizer = configure_optimizer(model, cfg, machine)
    iter_num, best_val_loss = 0, 1e9
    if ckpt is not None:
        import resume
        iter_num, best_val_loss = resume.restore(ckpt, model, optimizer, scaler, cfg, machine)
    ckpt = None  # free the memory
    if machine.master:
        micro_steps = cfg.gradient_accumulation_steps // machine.world_size
        print(f'torch {torch.__version__}, device {machine.device}, dtype {machine.dtype}, compile {machine.compile}, '
              f'world size {machine.world_size} ({cfg.parallel}), data {data_dir}')
        print('config: ' + ', '.join(f'{k}={v!r}' for k, v in cfg.items()))
        print(f'model: {model.get_num_params() / 1e6:.2f}M parameters; {tokens_per_iter(cfg):,} tokens per iteration '
              f'({micro_steps} micro-steps x {machine.world_size} processes x {cfg.batch_size} x {cfg.block_size}); '
              f'from iteration {iter_num} to {cfg.max_iters}')
    score_hellaswag = None
    if cfg.hellaswag_interval:
        import hellaswag
        score_hellaswag = hellaswag.scorer(data_dir, cfg.hellaswag_data, machine)
    with contextlib.closing(Log(cfg, machine, iter_num)) as log, stop_signals() as stop:
        return train_loop(model, optimizer, scaler, batches, cfg, machine, log, iter_num, best_val_loss,
                          score_hellaswag, stop)


def train_loop(model, optimizer, scaler, batches, cfg, machine, log, iter_num, best_val_loss, score_hellaswag, stop):
    raw_model = model
    if machine.compile:
        if machine.master:
            print('compiling the model (takes a minute)...')
        model = torch.compile(model)
    eval_model = model  # compiled, but without DDP: evaluation needs no gradient sync
    if machine.world_size > 1 and not is_sharded(model):
        model = DDP(model, device_ids=[machine.local_rank] if machine.device_type == 'cuda' else None)
    schedule = Schedule(cfg)
    start_iter, losses_logged, save_due, stopping, clipped, logged_at = iter_num, [], False, False, 0, iter_num
    t_start = t0 = t_saved = time.time()
    while True:
        evaluated = iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters or cfg.eval_only
        if evaluated:
            losses = estimate_loss(eval_model, batches, machine, cfg.eval_iters)
            log.eval(iter_num, losses)
            if not all(map(math.isfinite, losses.values())):
                raise not_finite(iter_num, cfg, 'the eval loss')
            if not cfg.eval_only and iter_num > start_iter and (losses['val'] < best_val_loss
                                                                or cfg.always_save_checkpoint):
                best_val_loss = min(best_val_loss, losses['val'])
                save(raw_model, optimizer, scaler, cfg, machine, iter_num, best_val_loss, losses['val'])
                save_due, t_saved = False, time.time()
        if score_hellaswag and (iter_num % cfg.hellaswag_interval == 0 or iter_num >= cfg.max_iters):
            log.hellaswag(iter_num, score_hellaswag(raw_model))
            evaluated = True
        if cfg.eval_only or iter_num >= cfg.max_iters:
            break
        if save_due or stopping:  # after the step's evaluation, as the unbroken run evaluates: resumes exactly
            save(raw_model, optimizer, scaler, cfg, machine, iter_num, best_val_loss, None)
            save_due, t0, t_saved = False, time.time(), time.time()
        if stopping:
            if machine.master:
                print(f'stopped by {stop[0]} at iteration {iter_num}, saved: the same command with '
                      f'--init_from=auto continues it (exit status {EXIT_PREEMPTED})')
            raise SystemExit(EXIT_PREEMPTED)
        if evaluated:
            t0 = time.time()  # the evaluations' time is not the next iteration's
        lr = schedule.apply(optimizer, iter_num)
        log_due = (iter_num + 1) % cfg.log_interval == 0
        loss, grad_norm, update_ratios = train_step(model, optimizer, scaler, batches, iter_num, cfg, machine, log_due)
        # the loss's all_reduce carries a stop signal or a due time-based save of any process: all act together
        flags = [bool(stop), 0 < cfg.checkpoint_interval_minutes * 60 < time.time() - t_saved]
        summed = torch.cat([loss.view(1), grad_norm.view(1).to(loss.dtype), loss.new_tensor(flags)])
        if machine.world_size > 1:
            torch.distributed.all_reduce(summed)
        loss_sum, norm_sum, stopping, save_due = summed.tolist()  # once per step: it catches a diverging run at once
        lossf, grad_normf = loss_sum / machine.world_size, norm_sum / machine.world_size  # the norm: the same on each
        clipped += grad_normf > cfg.grad_clip > 0
        if not math.isfinite(lossf):
            raise not_finite(iter_num, cfg, 'the training loss')
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        iter_num += 1
        if log_due:
            losses_logged.append(lossf)
            health = {'grad_norm': grad_normf, 'clipped': clipped / (iter_num - logged_at),
                      **{f'update_ratio_{i}': r for i, r in enumerate(update_ratios or [])}}
            clipped, logged_at = 0, iter_num
            eta = (time.time() - t_start) / (iter_num - start_iter) * (cfg.max_iters - iter_num)
            sequences = cfg.batch_size * cfg.gradient_accumulation_steps // machine.world_size
            mfu = raw_model.estimate_mfu(sequences, dt, machine.peak_flops) \
                if machine.peak_flops and iter_num - start_iter >= 5 else None  # after allocation and compilation
            log.step(iter_num, lossf, lr, dt, mfu, eta, health)
            t0 = time.time()  # the log's time (loss.png drawn after an evaluation) is not the next iteration's
    if machine.master:
        peak = machine.peak_memory_text()
        print(f'done in {format_seconds(time.time() - t_start)}; best val loss {best_val_loss:.4f}'
              + (f'; {peak}' if peak else ''))
    return losses_logged


def save(raw_model, optimizer, scaler, cfg, machine, iter_num, best_val_loss, val_loss):
    """out_dir/ckpt.pt from rank 0, or, under FSDP, out_dir/ckpt.dcp from every process's shards."""
    state = {
        'model_args': checkpoint.model_args(raw_model.config), 'iter_num': iter_num, 'best_val_loss': best_val_loss,
        'config': dict(cfg), 'rng': checkpoint.all_rng_states(machine.world_size), 'scaler': scaler.state_dict(),
        'val_loss': val_loss,
    }
    if cfg.lora_rank:
        import lora  # the adapters and the base's identity, not the base
        state.update(lora.checkpoint_entries(raw_model))
    if is_sharded(raw_model):
        import sharded_checkpoint
        sharded_checkpoint.save(raw_model, optimizer, state, cfg.out_dir, machine)
        path = os.path.join(cfg.out_dir, sharded_checkpoint.SHARDED)
    elif machine.master:
        path = os.path.join(cfg.out_dir, checkpoint.CKPT)
        checkpoint.save({'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(), **state}, path)
        if os.path.isdir(os.path.join(cfg.out_dir, 'ckpt.dcp')):
            import sharded_checkpoint
            sharded_checkpoint.remove(cfg.out_dir)  # the older checkpoint of an FSDP run this one resumed
    if machine.master:
        print(f'saved checkpoint to {path}')


def not_finite(iter_num, cfg, what):
    return ValueError(f'{what} became NaN or infinite at iteration {iter_num}; stopped without saving, so '
                      f'{cfg.out_dir}/ckpt.pt still holds the last good state: lower --learning_rate, '
                      'use --dtype=bfloat16 instead of float16, or check the data, then --init_from=resume')


if __name__ == '__main__':
    cli(main)
