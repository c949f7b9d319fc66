"""
Is the run going wrong? A Monitor reads each record runlog.Log writes to metrics.jsonl and returns the warnings it
starts, each once per episode (until the record that ends it) and in one line with what to try (docs/training.md):

    monitor = health.Monitor(cfg)
    for kind, message in monitor.feed({'iter': 100, 'loss': 9.1, 'grad_norm': 40.0, 'tokens_per_s': 1e4}): ...
"""

import os
from statistics import median

WINDOW = 10  # the recent logged steps a step is compared with (at least MIN_WINDOW of them)
MIN_WINDOW = 5
SPIKE = 1.5  # a loss this many times the recent median, and 0.3 nats above it, is a spike
EXPLODING = 10.0  # a gradient norm this many times the recent median
SLOWER = 3.0  # tokens/s this many times below the recent median
RISING_EVALS = 3  # val loss rising at this many evaluations in a row while train loss falls
NEAR_ENTROPY = 1.0  # 10 logged losses above this fraction of the unigram entropy, the last 5 no lower, after 2 x warmup


class Monitor:
    """cfg: train.py's settings; entropy: the training data's unigram entropy if known, else read from cfg's data_dir
    when first needed."""

    def __init__(self, cfg, entropy=None):
        self.cfg, self.steps, self.evals, self.active, self.entropy = cfg, [], [], set(), entropy

    def feed(self, r):
        """The warnings (kind, message) that the record r starts."""
        found = {}
        if r.get('loss') is not None:
            kinds = ('spike', 'gradient', 'throughput', 'plateau')
            self.step_warnings(r, self.steps[-WINDOW:], found)
            self.steps.append(r)
        elif r.get('val_loss') is not None:
            kinds = ('divergence',)
            self.evals.append(r)
            self.eval_warnings(found)
        else:
            return []
        started = [(k, m) for k, m in found.items() if k not in self.active]
        self.active = (self.active - set(kinds)) | set(found)
        return started

    def step_warnings(self, r, recent, found):
        def typical(key):
            values = [s[key] for s in recent if s.get(key) is not None]
            return median(values) if len(values) >= MIN_WINDOW and r.get(key) is not None else None
        it, loss, m = r['iter'], r['loss'], typical('loss')
        if m is not None and loss > SPIKE * m and loss - m > 0.3:
            found['spike'] = (f'loss spike at iteration {it}: {loss:.3f}, {loss / m:.1f}x the recent median; if '
                              'spikes recur, lower --learning_rate or raise --warmup_iters (and keep --grad_clip)')
        if (m := typical('grad_norm')) and r['grad_norm'] > EXPLODING * m:
            found['gradient'] = (f"gradient norm exploding at iteration {it}: {r['grad_norm']:.3g}, "
                                 f"{r['grad_norm'] / m:.0f}x the recent median; lower --learning_rate, "
                                 'set --grad_clip=1.0')
        if (m := typical('tokens_per_s')) and r['tokens_per_s'] < m / SLOWER:
            found['throughput'] = (f"throughput fell at iteration {it} to {r['tokens_per_s']:,.0f} tokens/s, "
                                   f"{m / r['tokens_per_s']:.1f}x below the recent median: another job on the machine, "
                                   'a throttled or swapping machine, or a slow data disk?')
        last = [s['loss'] for s in self.steps[-(2 * MIN_WINDOW - 1):]] + [loss]  # two windows: is it still falling?
        after_warmup = len(last) == 2 * MIN_WINDOW and it >= 2 * self.cfg.get('warmup_iters', 0)
        if after_warmup and (self.entropy or self.cfg.get('data_dir')):
            if self.entropy is None:
                import reference  # train.bin read once, by a run of 10 logged steps past twice its warmup
                self.entropy = reference.unigram_entropy(self.cfg['data_dir'])
            if min(last) >= NEAR_ENTROPY * self.entropy and sum(last[MIN_WINDOW:]) > sum(last[:MIN_WINDOW]) - 0.05:
                found['plateau'] = (f'the loss ({loss:.3f}) has stayed at or above the unigram entropy of the '
                                    f'training data ({self.entropy:.3f}): the model learns no more than token '
                                    'frequencies; try another --learning_rate (10x lower first) and check the data')

    def eval_warnings(self, found):
        last = self.evals[-(RISING_EVALS + 1):]
        if len(last) > RISING_EVALS and all(b['val_loss'] > a['val_loss'] and b['train_loss'] < a['train_loss']
                                             for a, b in zip(last, last[1:])):
            best = min(self.evals, key=lambda e: e['val_loss'])
            where = (f"{os.path.join(self.cfg['out_dir'], 'ckpt.pt')} holds it (always_save_checkpoint=False)"
                     if not self.cfg.get('always_save_checkpoint', True) else
                     'ckpt.pt holds the latest, not the best (always_save_checkpoint=True)')
            found['divergence'] = (f"val loss has risen for {RISING_EVALS} evaluations while train loss fell "
                                   f"(overfitting): the best val loss {best['val_loss']:.4f} was at iteration "
                                   f"{best['iter']}; {where}; stop here, or add --dropout or data")
