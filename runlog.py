"""
What a training run reports, from its master process: the console, out_dir/metrics.jsonl and wandb.

metrics.jsonl is strict JSON (NaN and infinities are written as null), one record per logged iteration
({"iter", "loss", "lr", "ms", "mfu"}) and per evaluation ({"iter", "train_loss", "val_loss"}). A resumed run
first rewrites it without what came after its checkpoint, so that the file holds each iteration once.
"""

import json
import math
import os

import machine
from atomic import atomic_path


class Log:
    """What the master process reports: the console, out_dir/metrics.jsonl (strict JSON, one record per logged
    iteration and eval: a resumed run first drops what came after its checkpoint) and wandb."""

    def __init__(self, cfg, m, iter_num):
        self.master, self.ema_mfu, self.file, self.wandb = m.master, None, None, None
        self.peak_flops = cfg['peak_flops'] or (machine.peak_flops(m.device, m.dtype) if m.master else None)
        if not m.master or cfg['eval_only']:
            return
        os.makedirs(cfg['out_dir'], exist_ok=True)
        path = os.path.join(cfg['out_dir'], 'metrics.jsonl')
        kept = read_records(path, before=iter_num) if cfg['init_from'] == 'resume' else []
        with atomic_path(path) as tmp, open(tmp, 'w') as f:
            f.writelines(json.dumps(r, allow_nan=False) + '\n' for r in kept)
        self.file = open(path, 'a')
        if cfg['wandb_log']:
            self.wandb = start_wandb(cfg)

    def record(self, record):
        record = {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in record.items()}
        if self.file:
            self.file.write(json.dumps(record, allow_nan=False) + '\n')
            self.file.flush()
        if self.wandb:
            self.wandb.log(record, step=record['iter'])

    def eval(self, iter_num, losses):
        if self.master:
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            self.record({'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val']})

    def step(self, iter_num, loss, lr, dt, mfu, eta):
        if not self.master:
            return
        if mfu is not None:
            self.ema_mfu = mfu if self.ema_mfu is None else 0.9 * self.ema_mfu + 0.1 * mfu
        shown = '-' if self.ema_mfu is None else f'{self.ema_mfu * 100:.1f}%'
        print(f'iter {iter_num}: loss {loss:.4f}, lr {lr:.2e}, time {dt * 1000:.1f}ms, mfu {shown}, '
              f'eta {format_seconds(eta)}')
        self.record({'iter': iter_num, 'loss': loss, 'lr': lr, 'ms': dt * 1000, 'mfu': self.ema_mfu})

    def close(self):
        if self.file:
            self.file.close()
        if self.wandb:
            self.wandb.finish()


def read_records(path, before):
    """The records of metrics.jsonl up to a checkpoint at iteration `before`: its training steps up to it, its
    evals before it (the resumed run evaluates that iteration again). A line cut by a kill is dropped."""
    records = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if isinstance(r, dict) and (r.get('iter', math.inf) < before or (r['iter'] == before and 'loss' in r)):
                    records.append(r)
    return records


def start_wandb(cfg):
    try:
        import wandb
        # wandb waits 90 s for an unreachable server by default: a user should not wait that long for the error
        timeout = {} if 'WANDB_INIT_TIMEOUT' in os.environ else {'settings': wandb.Settings(init_timeout=30)}
        wandb.init(project=cfg['wandb_project'], name=cfg['wandb_run_name'], config=dict(cfg), **timeout)
    except Exception as e:
        reason = ' '.join(f'{type(e).__name__}: {e}'.split()[:40])
        raise ValueError(f'wandb_log=True, but wandb could not start ({reason}): log in with `wandb login`, '
                         'or set WANDB_MODE=offline, or drop --wandb_log') from None
    return wandb


def format_seconds(s):
    s = int(s)
    return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s' if s >= 60 else f'{s}s'
