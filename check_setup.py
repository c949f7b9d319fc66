"""
Does this installation train as expected? Runs the quick start (config/train_shakespeare_char_cpu.py) for its first
150 iterations, evaluating at the start and at the end, and compares the val loss with the band of its reference
curve (references/shakespeare_char_cpu.json, recorded over several seeds) and the speed, loosely, with the
reference's; then says so in one line, with the likely cause when not. Exit status 0: as expected; 1: not.

    python check_setup.py
    python check_setup.py --iters=50          # a shorter check: where the reference evaluates (50, 100, ..., 450)
    python check_setup.py --data_dir=/path/to/shakespeare_char     # other --key=value go to train.py

About a minute on 2 CPU cores (a GPU, if there is one, runs it on the CPU all the same: the reference is a CPU's).
"""

import json
import os
import subprocess
import sys
import tempfile

import torch

import reference
from configurator import cli

CONFIG = 'config/train_shakespeare_char_cpu.py'
ITERS = 150  # long enough to tell a working installation from a broken one by the loss alone
LOSS_TOLERANCE = 0.1  # nats beyond the band's edges: the seeds' spread is about 0.01 at 150 iterations
SLOWER = 3.0  # a loose speed check: machines differ, and so does their load


def main():
    extra = sys.argv[1:]
    if '-h' in extra or '--help' in extra:
        print(__doc__)
        return
    given = [a.partition('=')[2] for a in extra if a.startswith('--iters=')]
    extra = [a for a in extra if not a.startswith('--iters=')]
    ref = reference.load('shakespeare_char_cpu')
    iters = given[-1] if given else str(ITERS)
    band = reference.band_at(ref, int(iters)) if iters.isdigit() and int(iters) > 0 else None
    if band is None:
        at = ', '.join(str(p['iter']) for p in ref['points'] if p['iter'])
        raise ValueError(f'--iters={iters} is not an iteration where the reference evaluates: give one of {at}')
    iters = int(iters)
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as out_dir:
        command = [sys.executable, 'train.py', CONFIG, f'--max_iters={iters}', f'--eval_interval={iters}',
                   '--device=cpu', f'--out_dir={out_dir}', *extra]
        result = subprocess.run(command, cwd=here, capture_output=True, text=True)
        if result.returncode:
            lines = result.stderr.strip().splitlines() or ['(no message)']
            raise ValueError(f'the quick start did not run ({lines[-1]}); run `python {" ".join(command[1:])}`')
        with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
            records = [json.loads(line) for line in f]
    val = next(r['val_loss'] for r in records if r.get('iter') == iters and 'val_loss' in r)
    ms = sorted(r['ms'] for r in records if r.get('ms') and r['iter'] > 5)
    ms = ms[len(ms) // 2]
    _, low, high = band
    torch_note = f"torch {torch.__version__} (the reference's: {ref['torch']})"
    speed = f"{ms:.0f} ms/iteration (the reference's {ref['ms_per_iter']:.0f} on {ref['hardware']})"
    if not low - LOSS_TOLERANCE <= val <= high + LOSS_TOLERANCE:
        causes = [f'the settings given ({" ".join(extra)})'] if extra else []
        causes += [torch_note] if torch.__version__ != ref['torch'] else []
        causes += ['the learning rate or the data (data/shakespeare_char: prepared from another text?)']
        print(f'setup check FAILED: val loss {val:.4f} at iteration {iters}, where the reference reaches '
              f'{low:.4f}-{high:.4f}; likely cause: {"; ".join(causes)}')
        sys.exit(1)
    if ms > SLOWER * ref['ms_per_iter']:
        threads = torch.get_num_threads()
        print(f'setup check: trains as expected (val loss {val:.4f} at iteration {iters}, reference '
              f'{low:.4f}-{high:.4f}) but slowly: {speed}; likely cause: other jobs on the machine, {threads} torch '
              f'threads on {os.cpu_count()} cores, {torch_note}, or a slow BLAS')
        return
    print(f'setup check OK: val loss {val:.4f} at iteration {iters} (reference {low:.4f}-{high:.4f}), {speed}; '
          f'{torch_note}')


if __name__ == '__main__':
    cli(main)
