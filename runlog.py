"""
What a training run reports, from its master process: the console, out_dir/metrics.jsonl, out_dir/loss.png and wandb.

metrics.jsonl is strict JSON (NaN and infinities as null), one record per logged iteration ({"iter", "tokens",
"loss", "lr", "ms", "mfu", "tokens_per_s", "grad_norm", "clipped", "update_ratio_<group>"}), per evaluation ({"iter",
"tokens", "train_loss", "val_loss", "train_bpb", "val_bpb": bits per byte, when known}) and per warning ({"iter",
"tokens", "warning", "message"}: health.py, reference.py); "tokens" counts the training tokens seen; a resumed run
drops what came after its checkpoint first. loss.png is drawn from it (curves.py) after every evaluation and at the
end.
"""

import json
import math
import os

from atomic import atomic_path
from training import tokens_per_iter


class Log:
    def __init__(self, cfg, machine, iter_num):
        self.master, self.iter_start, self.ema_mfu, self.file, self.wandb = machine.master, iter_num, None, None, None
        # loss.png's path; whether an evaluation asks for it to be drawn; whether records came after its last drawing
        self.plot, self.draw_due, self.unplotted = None, False, False
        self.tokens_per_iter, self.cfg, self.reference = tokens_per_iter(cfg), cfg, None
        if not machine.master or cfg['eval_only']:
            return
        os.makedirs(cfg['out_dir'], exist_ok=True)
        path = os.path.join(cfg['out_dir'], 'metrics.jsonl')
        kept = []
        if cfg['init_from'] == 'resume':  # the records up to its checkpoint stay
            import metrics
            kept = metrics.read_records(path, before=iter_num)
        with atomic_path(path) as tmp, open(tmp, 'w') as f:
            f.writelines(json.dumps(r, allow_nan=False) + '\n' for r in kept)
        import health  # the warnings: no part of a training step, so off its reading path
        self.monitor = health.Monitor(cfg)
        for r in kept:  # a resumed run's monitor goes on from the same state as the uninterrupted run's (warned)
            self.monitor.feed(r)
        self.file = open(path, 'a')
        # tokens are counted on from the checkpoint's count, since a resumed run may take another batch size
        self.tokens_start = next((r['tokens'] for r in kept if r['iter'] == iter_num and 'tokens' in r),
                                 iter_num * self.tokens_per_iter)
        self.plot = os.path.join(cfg['out_dir'], 'loss.png')
        self.label = os.path.basename(os.path.normpath(cfg['out_dir']))  # the run's name in the picture
        if cfg['wandb_log']:
            import wandb_run  # only runs that log to wandb read it
            self.wandb = wandb_run.start(cfg)

    def record(self, record):
        if not self.file:
            return
        tokens = self.tokens_start + (record['iter'] - self.iter_start) * self.tokens_per_iter
        record = {'iter': record['iter'], 'tokens': tokens,
                  **{k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in record.items()}}
        self.file.write(json.dumps(record, allow_nan=False) + '\n')
        self.file.flush()
        self.unplotted = True
        if self.wandb:
            self.wandb.log(record, step=record['iter'])
        for kind, message in self.monitor.feed(record):
            print(f'warning: {message}')
            self.record({'iter': record['iter'], 'warning': kind, 'message': message})

    def draw(self):
        """out_dir/loss.png from metrics.jsonl; only a picture: if it cannot be drawn, say so once and train on."""
        self.draw_due = False
        if self.plot and not os.path.exists(self.file.name):  # moved or removed during the run: keep the picture
            print(f'warning: {self.file.name} is gone (moved?), so {self.plot} is left as it was; the run '
                  'goes on logging to the moved file')
            self.plot = None
        if not self.plot:
            return
        try:
            import curves  # here, not at the top: matplotlib takes a second to import, and a run without it trains
            import metrics
            records = metrics.read_records(self.file.name, quiet=True)
            curves.draw([(self.label, records)], self.plot, ref=self.reference or None)
            self.unplotted = False
        except Exception as e:
            print(f'warning: cannot draw {self.plot} ({type(e).__name__}: {e}); training goes on without it')
            self.plot = None

    def eval(self, iter_num, losses):
        if self.master:
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                  + (f", val bpb {losses['val_bpb']:.4f}" if 'val_bpb' in losses else ''))
            record = {'iter': iter_num, **{k if '_' in k else f'{k}_loss': v for k, v in losses.items()}}
            self.record(record)
            if self.file:
                import reference  # the band of the reference curve of the run's settings, if they have one
                reference.check(self, record)
            # drawn at the next logged step, after the save and this iteration's HellaSwag score (its time counts in
            # that step's); not after a run's first evaluation, which has no training step to show yet
            self.draw_due = iter_num > self.iter_start

    def hellaswag(self, iter_num, result):
        if self.master:
            print(f"step {iter_num}: hellaswag acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f} "
                  f"({result['n']} examples)")
            self.record({'iter': iter_num, 'hellaswag_acc': result['acc'], 'hellaswag_acc_norm': result['acc_norm'],
                         'hellaswag_n': result['n']})

    def step(self, iter_num, loss, lr, dt, mfu, eta, health=None):
        if not self.master:
            return
        if mfu is not None:
            self.ema_mfu = mfu if self.ema_mfu is None else 0.9 * self.ema_mfu + 0.1 * mfu
        shown = '-' if self.ema_mfu is None else f'{self.ema_mfu * 100:.1f}%'
        health = health or {}
        norm = f", grad norm {health['grad_norm']:.3g}" if 'grad_norm' in health else ''
        print(f'iter {iter_num}: loss {loss:.4f}, lr {lr:.2e}, time {dt * 1000:.1f}ms, '
              f'{self.tokens_per_iter / dt:,.0f} tok/s{norm}, mfu {shown}, eta {format_seconds(eta)}')
        self.record({'iter': iter_num, 'loss': loss, 'lr': lr, 'ms': dt * 1000, 'mfu': self.ema_mfu,
                     'tokens_per_s': self.tokens_per_iter / dt, **health})
        if self.draw_due:
            self.draw()

    def close(self):
        if self.unplotted:  # the last evaluation, or the last steps of a run stopped by an error or Ctrl-C
            self.draw()
        if self.file:
            self.file.close()
        if self.wandb:
            self.wandb.finish()


def format_seconds(s):
    s = int(s)
    return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s' if s >= 60 else f'{s}s'
