"""
The loss curves of one run or several in one picture, to compare them by eye: the losses, the learning rate and
HellaSwag (when logged) of each run, one color per run, labeled by its folder as written on the command line.

    python plot.py out-shakespeare-char-cpu                        # writes runs.png
    python plot.py out-a out-b --x=tokens --out=compare.png
    python plot.py out --x=seconds
    python plot.py out-shakespeare-char-cpu out-shakespeare-bpe-cpu --y=bpb      # different tokenizers

Each OUT_DIR is a train.py out_dir; its metrics.jsonl is read as it is, so a run in progress can be drawn. --x is
iter (the default), tokens (the training tokens seen, which train.py records) or seconds (the training time, the
evaluations left out). --y is loss (the default) or bpb (the evaluations' val bits per byte, which compare
runs whose tokenizers differ, where a loss per token does not). --reference=NAME draws the band of
references/NAME.json behind the runs; by default the one train.py matched with the first run's settings (see
reference.py), none with --reference=none. --out (default runs.png) is written atomically; its extension picks
the format (.png, .svg, .pdf). train.py draws each run's own out_dir/loss.png the same way.
"""

import os
import sys

import curves
import reference
from configurator import cli, configure
from metrics import read_records

DEFAULTS = {
    'out': 'runs.png',  # the picture to write
    'x': 'iter',  # iter, tokens or seconds
    'y': 'loss',  # loss or bpb
    'reference': '',  # the reference band to draw (references/NAME.json); '': the one train.py matched, 'none'
}


def main():
    if '-h' in sys.argv or '--help' in sys.argv:
        print(__doc__)
        return
    folders = [arg for arg in sys.argv[1:] if not arg.startswith('-')]
    config = configure(DEFAULTS, [arg for arg in sys.argv[1:] if arg.startswith('-')])
    if not folders:
        raise ValueError('no run: write python plot.py OUT_DIR [OUT_DIR ...] (see --help)')
    if config['x'] not in curves.XS:
        raise ValueError(f"--x={config['x']} is not one of {', '.join(curves.XS)}")
    if config['y'] not in curves.YS:
        raise ValueError(f"--y={config['y']} is not one of {', '.join(curves.YS)}")
    runs = []
    for folder in folders:
        if not os.path.isdir(folder):
            raise ValueError(f'{folder} does not exist: give the out_dir of a train.py run')
        path = os.path.join(folder, 'metrics.jsonl')
        if not os.path.isfile(path):
            raise ValueError(f'{folder} has no metrics.jsonl: is it the out_dir of a train.py run?')
        records = read_records(path)
        if config['y'] == 'bpb' and 'val_bpb' not in curves.series(records, config['x']):
            raise ValueError(f'{path} has no val_bpb: the run was made before train.py logged bits per byte, or its '
                             'tokenizer could not be read; draw it with --y=loss')
        if not curves.series(records, config['x']):
            hint = ' (no record has "tokens": an older train.py wrote it; use --x=iter)' if config['x'] == 'tokens' else ''
            raise ValueError(f"{path} has nothing to draw against --x={config['x']}{hint}")
        runs.append((os.path.normpath(folder), records))
    name = config['reference'] or next((r['reference'] for _, records in runs for r in records if 'reference' in r),
                                       'none')
    ref = None if name == 'none' or config['x'] == 'seconds' else reference.load(name)
    curves.draw(runs, config['out'], config['x'], config['y'], ref)
    print(f"wrote {config['out']}: {len(runs)} run{'s' * (len(runs) > 1)} against {config['x']}"
          + (', val bits per byte' if config['y'] == 'bpb' else ''))


if __name__ == '__main__':
    cli(main)
