"""
Record the reference curves of shipped configs on this machine (issue 25): the config run with several seeds,
evaluating every --eval_interval iterations and logging every --log_interval (neither draws training batches: the
training is the config's), into references/<name of the last config>.json: the val loss band (mean, min, max over
the seeds) and val bits per byte at each evaluation, the seconds per iteration, each seed's logged steps (replayed
by the tests: a normal run raises no warning), the settings a run must share to be matched with it, and where it
comes from (hardware, torch, date).

    python benchmarks/reference_curves.py config/train_shakespeare_char_cpu.py --seeds=3 --eval_interval=50
    python benchmarks/reference_curves.py config/train_shakespeare_char_cpu.py config/train_shakespeare_bpe_cpu.py \
        --seeds=3 --eval_interval=25

Config files apply in order, as train.py's do (the BPE one changes the quick start's data and length).
"""

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo root
sys.path.insert(0, ROOT)

import dataset  # noqa: E402
import reference  # noqa: E402
import training  # noqa: E402
from configurator import cli, configure  # noqa: E402

DEFAULTS = {'seeds': 3, 'eval_interval': 50, 'log_interval': 5, 'hardware': '', 'out': ''}


def main():
    configs = [a for a in sys.argv[1:] if not a.startswith('--')]
    opts = configure(DEFAULTS, [a for a in sys.argv[1:] if a.startswith('--')])
    if not configs:
        raise ValueError('give a config file: python benchmarks/reference_curves.py config/NAME.py --seeds=3')
    settings = configure(training.DEFAULTS, configs, training.TYPES_OF_NONE)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(opts['seeds']):
            out_dir = os.path.join(tmp, f'seed{seed}')
            command = [sys.executable, 'train.py', *configs, f'--seed={seed}', f'--out_dir={out_dir}',
                       f"--eval_interval={opts['eval_interval']}", f"--log_interval={opts['log_interval']}"]
            print(' '.join(command[1:]), flush=True)
            subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
                runs.append([json.loads(line) for line in f])
    evals = [[r for r in records if 'val_loss' in r] for records in runs]
    points = []
    for at in zip(*evals):
        vals = [r['val_loss'] for r in at]
        point = {'iter': at[0]['iter'], 'tokens': at[0]['tokens'], 'val_loss': statistics.mean(vals),
                 'val_loss_min': min(vals), 'val_loss_max': max(vals)}
        if all('val_bpb' in r for r in at):
            point['val_bpb'] = statistics.mean(r['val_bpb'] for r in at)
        points.append(point)
    ms = statistics.median(r['ms'] for records in runs for r in records[5:] if 'ms' in r)
    name = os.path.splitext(os.path.basename(configs[-1]))[0].removeprefix('train_')
    config = ' '.join(os.path.relpath(os.path.abspath(c), ROOT) for c in configs)
    import torch
    result = {
        'name': name, 'config': config,  # the config files, in order, separated by spaces
        'source': f'this project: benchmarks/reference_curves.py {config} --seeds={opts["seeds"]} '
                  f'--eval_interval={opts["eval_interval"]} --log_interval={opts["log_interval"]}',
        'hardware': opts['hardware'] or f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores',
        'torch': torch.__version__, 'date': datetime.date.today().isoformat(), 'seeds': opts['seeds'],
        'match': reference.match_keys(settings), 'ms_per_iter': ms, 'points': points,
        # of train.bin (nats per token): replaying the steps for the plateau warning needs no data then
        'unigram_entropy': reference.unigram_entropy(os.path.join(ROOT, dataset.folder(settings['dataset'],
                                                                                       settings['data_dir']))),
        'steps': [[{k: r[k] for k in ('iter', 'loss', 'grad_norm', 'tokens_per_s') if k in r}
                   for r in records if 'loss' in r] for records in runs],
    }
    path = opts['out'] or os.path.join(ROOT, 'references', f'{name}.json')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(result, f, indent=1)
        f.write('\n')
    last = points[-1]
    print(f"wrote {path}: val loss at iteration {last['iter']} {last['val_loss']:.4f} "
          f"({last['val_loss_min']:.4f}-{last['val_loss_max']:.4f}) over {opts['seeds']} seeds; {ms:.1f} ms/iter")


if __name__ == '__main__':
    cli(main)
