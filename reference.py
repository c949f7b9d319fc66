"""
Reference curves (references/*.json): what the shipped configs' runs look like, recorded by
benchmarks/reference_curves.py over several seeds (a val loss band), or a published anchor (a point, with its
source). A run is matched with the reference whose settings it shares; loss.png and plot.py draw its band
behind the run (curves.py), and train.py warns when an evaluation falls far outside it.

    ref = reference.find(cfg)                # the reference of a run's settings, or None
    ref = reference.load('shakespeare_char_cpu')
    floor = reference.unigram_entropy('data/shakespeare_char')   # nats per token: a model of frequencies only
"""

import json
import os

import numpy as np

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'references')
# what a run may change and still be compared with the reference: where it writes and how often it reports
UNMATCHED = {'out_dir', 'eval_interval', 'eval_iters', 'log_interval', 'always_save_checkpoint', 'wandb_log',
             'wandb_project', 'wandb_run_name', 'device', 'compile', 'dtype', 'seed', 'overwrite', 'init_from',
             'checkpoint_interval_minutes', 'data_dir'}
OUTSIDE = 0.25  # an eval loss this far (in nats) beyond the band's edge is far outside it


def match_keys(cfg):
    """The settings a config file gives that a run must share to be matched with its reference (JSON values)."""
    return json.loads(json.dumps({k: cfg[k] for k in sorted(cfg.given) if k not in UNMATCHED}))


def names():
    return sorted(f[:-5] for f in os.listdir(FOLDER) if f.endswith('.json')) if os.path.isdir(FOLDER) else []


def load(name):
    if name not in names():
        raise ValueError(f"no reference {name!r}: the references are {', '.join(names()) or 'none'}")
    with open(os.path.join(FOLDER, f'{name}.json')) as f:
        return json.load(f)


def find(cfg):
    """The reference whose settings the run's cfg (a mapping: train.py's settings) all has, or None."""
    values = json.loads(json.dumps({k: v for k, v in dict(cfg).items()}, default=str))
    for name in names():
        ref = load(name)
        if ref.get('match') and all(values.get(k) == v for k, v in ref['match'].items()):
            return ref
    return None


def check(log, record):
    """At a run's evaluations (runlog.Log): its reference, found at the first (its name recorded for plot.py), and
    the warning when the evaluation `record` lies far outside the reference's band, printed and recorded."""
    if log.reference is None:
        log.reference = find(log.cfg) or {}
        if log.reference and log.iter_start == 0:  # a resumed run keeps the record of its start
            log.record({'iter': 0, 'reference': log.reference['name']})
    message = outside(log.reference, record) if log.reference else None
    if message:
        print(f'warning: {message}')
        log.record({'iter': record['iter'], 'warning': 'reference', 'message': message})


def band_at(ref, iter_num):
    """(mean, min, max) of the reference's val loss at iter_num, or None where it has no evaluation there."""
    for p in ref.get('points', []):
        if p['iter'] == iter_num:
            return p['val_loss'], p.get('val_loss_min', p['val_loss']), p.get('val_loss_max', p['val_loss'])
    return None


def outside(ref, record):
    """A warning message when the evaluation `record` lies far outside the reference's band, else None (and None
    for a published anchor: a point from another machine, often another data split, is no tolerance band)."""
    band = band_at(ref, record['iter']) if record.get('val_loss') is not None and not ref.get('anchor') else None
    if band is None:
        return None
    mean, low, high = band
    if low - OUTSIDE <= record['val_loss'] <= high + OUTSIDE:
        return None
    return (f"val loss {record['val_loss']:.4f} at iteration {record['iter']} is far outside the reference band "
            f"{low:.4f}-{high:.4f} of {ref['name']} ({ref['source']}); check the settings against {ref['config']}, "
            'the data and the torch version (python check_setup.py)')


def unigram_entropy(data_dir, samples=64, length=1 << 16):
    """The entropy (nats per token) of the token frequencies in train.bin, from `samples` stretches spread over it:
    the loss of a model that learns frequencies only."""
    import dataset  # here: plot.py, which reads references too, starts without torch
    data = np.memmap(os.path.join(data_dir, 'train.bin'), dtype=dataset.token_dtype(dataset.load_meta(data_dir)),
                     mode='r')
    sample = data[:] if len(data) <= samples * length else np.concatenate(
        [data[s:s + length] for s in np.linspace(0, len(data) - length, samples).astype(np.int64)])
    counts = np.bincount(sample)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
