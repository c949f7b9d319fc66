"""
Training speed of train.py on CPU (issues 4 and 14): each run is a fresh `python train.py` process, timed
from its launch to its exit, with every line of its output time-stamped.

    flock /tmp/cpu.lock python benchmarks/train_speed.py --max_iters=300            # ms/iter, tokens/s
    flock /tmp/cpu.lock python benchmarks/train_speed.py --max_iters=300 --compare=/tmp/old  # A B A B
    flock /tmp/cpu.lock python benchmarks/train_speed.py --repeats=1                # the whole recipe
    flock /tmp/cpu.lock python benchmarks/train_speed.py --preset=nanogpt,cpu --target=1.88  # the quick start vs nanoGPT
    flock /tmp/cpu.lock python benchmarks/train_speed.py --preset=adamw,muon --target=1.88   # AdamW vs Muon
    flock /tmp/cpu.lock python benchmarks/train_speed.py --preset=cpu --args='--muon_lr=0.03 --max_iters=500'
    flock /tmp/cpu.lock python benchmarks/train_speed.py --preset=baby --max_iters=4 --repeats=1

Presets: 'recipe' is nanoGPT's README CPU recipe (config/train_shakespeare_char.py with its flags) through
this train.py; 'nanogpt' is the same recipe through nanoGPT's own train.py, in the nanoGPT checkout
--nanogpt (its data/shakespeare_char/ prepared); 'cpu' is config/train_shakespeare_char_cpu.py as it
stands; 'adamw' and 'muon' are that config (its learning rates) with either optimizer and the same
700-iteration schedule, evaluating every 25 iterations so that the iteration where val first goes below
--target shows;
'baby' is config/train_shakespeare_char.py (the GPU baby GPT, 6x6x384, block 256, batch 64) on this CPU,
evaluating on 1 batch only. Several presets, comma-separated, alternate in each repeat (A B A B), so that
the machine's drift hits all alike; so does --compare=DIR, which runs each preset in this checkout and in
the checkout DIR. --args are added to this train.py's command line (not nanoGPT's).
Per run it prints the whole-process wall time, the median ms per iteration (train.py's own timing,
which leaves out evaluation; the first 5 iterations are skipped) with its 10th-90th percentile,
tokens/s, the time at which val loss first went below --target (on the whole process's clock), the
iteration of that evaluation and its training seconds (iterations x median ms/iter: evaluations left
out), the last val loss and the peak RSS. Medians and (min-max) over the repeats end the output.
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo root
sys.path.insert(0, ROOT)

from configurator import cli, configure

# nanoGPT's README: "python train.py config/train_shakespeare_char.py --device=cpu --compile=False ..."
RECIPE = ['--device=cpu', '--compile=False', '--eval_iters=20', '--log_interval=1', '--block_size=64',
          '--batch_size=12', '--n_layer=4', '--n_head=4', '--n_embd=128', '--max_iters=2000',
          '--lr_decay_iters=2000', '--dropout=0.0']
CPU_CONFIG = os.path.join(ROOT, 'config', 'train_shakespeare_char_cpu.py')
# AdamW against Muon: one schedule long enough for both to reach val 1.88, evaluated often
SAME_SCHEDULE = ['--max_iters=700', '--lr_decay_iters=700', '--eval_interval=25', '--log_interval=1']
PRESETS = {
    'recipe': [os.path.join(ROOT, 'config', 'train_shakespeare_char.py'), *RECIPE],
    'nanogpt': [os.path.join('config', 'train_shakespeare_char.py'), *RECIPE],  # in the nanoGPT checkout
    'cpu': [CPU_CONFIG],
    'adamw': [CPU_CONFIG, '--optimizer=adamw', *SAME_SCHEDULE],
    'muon': [CPU_CONFIG, '--optimizer=muon', *SAME_SCHEDULE],
    'baby': [os.path.join(ROOT, 'config', 'train_shakespeare_char.py'), '--device=cpu', '--compile=False',
             '--eval_iters=1', '--log_interval=1'],  # an evaluation of 200 batches would take 25 minutes here
}
DEFAULTS = {
    'preset': 'recipe',
    'max_iters': 0,  # 0: the preset's own; fewer iterations time the speed only
    'repeats': 3,
    'compare': '',  # another checkout to alternate with
    'nanogpt': '/tmp/nanogpt',  # nanoGPT's checkout, for the preset 'nanogpt'
    'args': '',  # more train.py arguments for this project's presets, e.g. '--muon_lr=0.03 --max_iters=500'
    'data_dir': '',  # '' means train.py's default, data/shakespeare_char
    'target': 1.9,  # report when val loss first goes below this
    'verbose': False,  # echo train.py's output
}


def run(tree, args, target, verbose):
    """One train.py process in `tree`: a dict of figures."""
    with tempfile.TemporaryDirectory() as out_dir:
        cmd = [sys.executable, 'train.py', *args, f'--out_dir={out_dir}']
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line))
            if verbose:
                print(line, end='')
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS, not the largest of all children
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise ValueError(f'{" ".join(cmd)} failed in {tree}:\n' + ''.join(text for _, text in lines[-20:]))
    ms = [float(m.group(1)) for _, text in lines if (m := re.match(r'iter \d+:.* time ([\d.]+)ms', text))]
    ms = ms[5:] if len(ms) > 10 else ms[1:]  # train.py's own per-iteration times, past the first (allocations)
    tokens = next(int((m.group(1) or m.group(2)).replace(',', '')) for _, text in lines  # ours, or nanoGPT's words
                  if (m := re.search(r'([\d,]+) tokens per iteration|tokens per iteration will be: ([\d,]+)', text)))
    evals = [(t, int(m.group(1)), float(m.group(2))) for t, text in lines
             if (m := re.match(r'step (\d+): .*val loss ([\d.]+)', text))]
    reached = next(((t, it) for t, it, loss in evals if loss < target), (float('nan'), float('nan')))
    ms.sort()
    return {
        'wall_s': wall,
        'ms_per_iter': statistics.median(ms) if ms else float('nan'),
        'ms_p10': ms[len(ms) // 10] if ms else float('nan'),
        'ms_p90': ms[len(ms) * 9 // 10] if ms else float('nan'),
        'tokens_per_s': tokens / statistics.median(ms) * 1000 if ms else float('nan'),
        'first_below_s': reached[0],
        'iters_to_target': reached[1],
        'train_s_to_target': reached[1] * statistics.median(ms) / 1000 if ms else float('nan'),
        'val_loss': evals[-1][2] if evals else float('nan'),
        'peak_rss_gib': usage.ru_maxrss / 2 ** 20,  # ru_maxrss is in KiB on Linux
    }


def summary(values):
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return 'n/a'
    return f'{statistics.median(values):.4g} ({min(values):.4g}-{max(values):.4g})'


def main():
    config = configure(DEFAULTS, sys.argv[1:])
    presets = config['preset'].split(',')
    for preset in presets:
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r} is not one of {', '.join(PRESETS)}")
    sides = {}  # name -> (checkout, train.py arguments)
    for preset in presets:
        args = list(PRESETS[preset])
        if config['max_iters']:
            args.append(f"--max_iters={config['max_iters']}")
        if config['data_dir']:
            args.append(f"--data_dir={config['data_dir']}")
        if preset == 'nanogpt':
            sides[preset] = (os.path.abspath(config['nanogpt']), args)
            continue
        args += config['args'].split()
        sides[preset if len(presets) > 1 else 'this'] = (ROOT, args)
        if config['compare']:
            sides[f'{preset} compare' if len(presets) > 1 else 'compare'] = (os.path.abspath(config['compare']), args)
    for name, (tree, args) in sides.items():
        print(f"{name}: {tree}: train.py {' '.join(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a for a in args)}")
    results = {name: [] for name in sides}
    for i in range(config['repeats']):
        for name, (tree, args) in sides.items():
            r = run(tree, args, config['target'], config['verbose'])
            results[name].append(r)
            print(f"{name} #{i + 1}: wall {r['wall_s']:.1f}s, {r['ms_per_iter']:.1f} ms/iter "
                  f"(p10-p90 {r['ms_p10']:.1f}-{r['ms_p90']:.1f}), {r['tokens_per_s']:,.0f} tokens/s, "
                  f"val < {config['target']} at {r['first_below_s']:.1f}s (iteration {r['iters_to_target']}, "
                  f"{r['train_s_to_target']:.1f}s of training), last val loss {r['val_loss']:.4f}, "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    for name, rs in results.items():
        print(f'{name} (median (min-max) of {len(rs)}): ' + ', '.join(f'{k} {summary([r[k] for r in rs])}' for k in rs[0]))
    for name in results:  # with --compare: the speed of each pair, this checkout over the other
        if name.endswith('compare'):
            base = name[:-len('compare')].strip() or 'this'
            ratios = [a['tokens_per_s'] / b['tokens_per_s'] for a, b in zip(results[base], results[name])]
            print(f'tokens/s {base} / {name}, per A B pair: {summary(ratios)}')

if __name__ == '__main__':
    cli(main)
