"""
Training speed of train.py on CPU (issue 4): each run is a fresh `python train.py` process, timed from
its launch to its exit, with every line of its output time-stamped.

    flock /tmp/cpu.lock python benchmarks/train_speed.py --max_iters=300            # ms/iter, tokens/s
    flock /tmp/cpu.lock python benchmarks/train_speed.py --max_iters=300 --compare=/tmp/old  # A B A B
    flock /tmp/cpu.lock python benchmarks/train_speed.py --repeats=1                # the whole recipe
    flock /tmp/cpu.lock python benchmarks/train_speed.py --preset=cpu               # config/train_shakespeare_char_cpu.py
    flock /tmp/cpu.lock python benchmarks/train_speed.py --preset=baby --max_iters=4 --repeats=1
    flock /tmp/cpu.lock python benchmarks/train_speed.py --preset=baby --max_iters=6 --compare=/tmp/nanogpt  # vs nanoGPT

Presets: 'recipe' is nanoGPT's README CPU recipe (config/train_shakespeare_char.py with its flags);
'cpu' is config/train_shakespeare_char_cpu.py as it stands; 'baby' is config/train_shakespeare_char.py
(the GPU baby GPT, 6x6x384, block 256, batch 64) on this CPU, evaluating on 1 batch only.
Per run it prints the whole-process wall time, the median ms per iteration (train.py's own timing,
which leaves out evaluation; the first 5 iterations are skipped) with its 10th-90th percentile,
tokens/s, the time at which val loss first went below --target, the last val loss and the peak RSS.
With --compare=DIR the same run alternates between this checkout and the checkout DIR (A B A B), so
that the machine's drift hits both alike; DIR may be a checkout of nanoGPT itself (its train.py takes the
same flags; give it the same data in DIR/data/shakespeare_char), which runs in float32 on CPUs whatever
--dtype says. Medians and (min-max) over the repeats end the output, and with --compare the ratio of
tokens/s, this / compare, of each A B pair. --args adds train.py flags to both sides, e.g.
--args='--dtype=float32'.
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
PRESETS = {
    'recipe': [os.path.join(ROOT, 'config', 'train_shakespeare_char.py'), *RECIPE],
    'cpu': [os.path.join(ROOT, 'config', 'train_shakespeare_char_cpu.py')],
    'baby': [os.path.join(ROOT, 'config', 'train_shakespeare_char.py'), '--device=cpu', '--compile=False',
             '--eval_iters=1', '--log_interval=1'],  # an evaluation of 200 batches would take 25 minutes here
}
DEFAULTS = {
    'preset': 'recipe',
    'max_iters': 0,  # 0: the preset's own; fewer iterations time the speed only
    'repeats': 3,
    'compare': '',  # another checkout to alternate with
    'data_dir': '',  # '' means train.py's default, data/shakespeare_char
    'target': 1.9,  # report when val loss first goes below this
    'verbose': False,  # echo train.py's output
    'args': '',  # more train.py flags for both sides, separated by spaces
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
    tokens = next(int((m.group(1) or m.group(2)).replace(',', '')) for _, text in lines  # ours or nanoGPT's wording
                  if (m := re.search(r'([\d,]+) tokens per iteration|tokens per iteration will be: ([\d,]+)', text)))
    evals = [(t, float(m.group(1))) for t, text in lines if (m := re.match(r'step \d+: .*val loss ([\d.]+)', text))]
    ms.sort()
    return {
        'wall_s': wall,
        'ms_per_iter': statistics.median(ms) if ms else float('nan'),
        'ms_p10': ms[len(ms) // 10] if ms else float('nan'),
        'ms_p90': ms[len(ms) * 9 // 10] if ms else float('nan'),
        'tokens_per_s': tokens / statistics.median(ms) * 1000 if ms else float('nan'),
        'first_below_s': next((t for t, loss in evals if loss < target), float('nan')),
        'val_loss': evals[-1][1] if evals else float('nan'),
        'peak_rss_gib': usage.ru_maxrss / 2 ** 20,  # ru_maxrss is in KiB on Linux
    }


def summary(values):
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return 'n/a'
    return f'{statistics.median(values):.4g} ({min(values):.4g}-{max(values):.4g})'


def main():
    config = configure(DEFAULTS, sys.argv[1:])
    if config['preset'] not in PRESETS:
        raise ValueError(f"preset={config['preset']!r} is not one of {', '.join(PRESETS)}")
    args = list(PRESETS[config['preset']])
    if config['max_iters']:
        args.append(f"--max_iters={config['max_iters']}")
    if config['data_dir']:
        args.append(f"--data_dir={config['data_dir']}")
    args += config['args'].split()
    trees = {'this': ROOT}
    if config['compare']:
        trees['compare'] = os.path.abspath(config['compare'])
    print(f"train.py {' '.join(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a for a in args)}")
    results = {name: [] for name in trees}
    for i in range(config['repeats']):
        for name, tree in trees.items():
            r = run(tree, args, config['target'], config['verbose'])
            results[name].append(r)
            print(f"{name} #{i + 1}: wall {r['wall_s']:.1f}s, {r['ms_per_iter']:.1f} ms/iter "
                  f"(p10-p90 {r['ms_p10']:.1f}-{r['ms_p90']:.1f}), {r['tokens_per_s']:,.0f} tokens/s, "
                  f"val < {config['target']} at {r['first_below_s']:.1f}s, last val loss {r['val_loss']:.4f}, "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    for name, rs in results.items():
        print(f'{name} (median (min-max) of {len(rs)}): ' + ', '.join(f'{k} {summary([r[k] for r in rs])}' for k in rs[0]))
    if config['compare']:
        ratios = [a['tokens_per_s'] / b['tokens_per_s'] for a, b in zip(results['this'], results['compare'])]
        print(f'tokens/s this / compare, per A B pair: {summary(ratios)}')


if __name__ == '__main__':
    cli(main)
