"""
Loss curves from metrics.jsonl: the series a run logged, and one picture of one run or several.

    import curves, metrics
    curves.draw([('out', metrics.read_records('out/metrics.jsonl'))], 'loss.png', x='tokens')
    curves.draw(runs, 'bpb.png', y='bpb')   # val bits per byte: runs with different tokenizers on one scale

train.py draws its out_dir/loss.png this way (in runlog.Log) and plot.py overlays runs. The picture has the losses
(every logged step's, and the evaluations' train and val loss) on a log scale when they span a factor of 2 or more,
with val bits per byte on a second scale at the right when one run logged it (the same batches at every
evaluation: bpb is val loss times a constant), or with y='bpb' the evaluations' val bits per byte instead; the
learning rate on its own axis below, and HellaSwag's acc_norm on a third when a run logged it; one color per
run. It is drawn with Agg, matplotlib's headless renderer, without pyplot: no display and no global state.
"""

import math
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from atomic import atomic_path

XS = {'iter': 'iteration', 'tokens': 'tokens', 'seconds': 'training time (s), evaluations left out'}
KEYS = ('loss', 'train_loss', 'val_loss', 'val_bpb', 'lr', 'hellaswag_acc_norm')  # as metrics.jsonl names them
LOSS_STYLES = {  # how each kind of loss is drawn, and its legend entry
    'loss': (dict(linewidth=1, alpha=0.5), 'train (logged steps)'),  # light: the evaluations stay visible on it
    'train_loss': (dict(linestyle=':', linewidth=0.8, marker='s', markersize=3), 'train (evaluation)'),
    'val_loss': (dict(linestyle='--', linewidth=0.8, marker='o', markersize=4), 'val (evaluation)'),
}
YS = {'loss': ('loss', LOSS_STYLES),  # the top picture: its label, and the series drawn there
      'bpb': ('val bits per byte', {'val_bpb': (LOSS_STYLES['val_loss'][0], 'val (evaluation)')})}


def series(records, x='iter'):
    """The points to draw from a run's metrics.jsonl records (in file order): {name: (xs, ys)} for each name of KEYS
    that the records hold, the values exactly as written; a record without a number for the name (null) or for
    x is left out. x is 'iter', 'tokens' (the tokens seen, which train.py records) or 'seconds' (see seconds())."""
    if x not in XS:
        raise ValueError(f"x={x!r} is not one of {', '.join(XS)}")
    at = seconds(records) if x == 'seconds' else [r.get(x) for r in records]
    drawn = {}
    for key in KEYS:
        points = [(a, r[key]) for a, r in zip(at, records) if is_number(a) and is_number(r.get(key))]
        if points:
            drawn[key] = ([a for a, _ in points], [y for _, y in points])
    return drawn


def seconds(records):
    """The training time at each record, in seconds. train.py logs the time of one iteration every log_interval,
    so each logged step's 'ms' stands for every iteration since the step logged before it; evaluations are not
    counted. A resumed run's file holds each iteration once, so its time is counted once."""
    total, last, at = 0.0, 0, []
    for r in records:
        if is_number(r.get('ms')):
            total += r['ms'] / 1000 * (r['iter'] - last)
            last = r['iter']
        at.append(total)
    return at


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def band(ref, x='iter', y='loss'):
    """A reference's (reference.py) points to draw: xs, lows, means, highs of its val loss (or val bpb, a line) at
    each of its evaluations; a published anchor is a point whose low and high are its value."""
    key = 'val_loss' if y == 'loss' else 'val_bpb'
    points = [p for p in ref.get('points', []) if is_number(p.get(x)) and is_number(p.get(key))]
    lows = [p.get(f'{key}_min', p[key]) for p in points]
    highs = [p.get(f'{key}_max', p[key]) for p in points]
    return [p[x] for p in points], lows, [p[key] for p in points], highs


def draw(runs, path, x='iter', y='loss', ref=None):
    """Draw runs, a list of (label, records), one color each, y ('loss' or 'bpb') against x, into the image file
    `path`, written atomically (PNG; the format follows the extension, so .svg and .pdf work too); behind them
    the band of the reference `ref` (reference.py), if given. Returns the Figure."""
    ylabel, styles = YS[y]
    drawn = [(label, series(records, x)) for label, records in runs]
    hellaswag = any('hellaswag_acc_norm' in s for _, s in drawn)
    fig = Figure(figsize=(8, 7.5 if hellaswag else 6), layout='constrained')
    FigureCanvasAgg(fig)
    axes = fig.subplots(3 if hellaswag else 2, 1, sharex=True, height_ratios=[3, 1, 1] if hellaswag else [3, 1])
    loss_ax, lr_ax = axes[0], axes[1]
    xs, lows, means, highs = band(ref, x, y) if ref else ([], [], [], [])
    if xs:  # behind the runs: the min-max band over the reference's seeds, its mean dotted
        loss_ax.fill_between(xs, lows, highs, color='gray', alpha=0.25, linewidth=0, zorder=0)
        loss_ax.plot(xs, means, color='gray', linestyle=':', marker='.' if len(xs) < 3 else None, zorder=0)
    for i, (label, s) in enumerate(drawn):
        color = f'C{i % 10}'
        for key, (style, _) in styles.items():
            if key in s:
                loss_ax.plot(*s[key], color=color, **style)
        if 'lr' in s:
            lr_ax.plot(*s['lr'], color=color)
        if 'hellaswag_acc_norm' in s:
            axes[2].plot(*s['hellaswag_acc_norm'], color=color, marker='o', markersize=3)
    shown = [key for key in styles if any(key in s for _, s in drawn)]
    handles = [Line2D([], [], color=f'C{i % 10}', linewidth=3) for i in range(len(drawn))]
    handles += [Line2D([], [], color='gray', **styles[key][0]) for key in shown]
    references = [f"reference: {ref['name']}"] if xs else []
    handles += [Line2D([], [], color='gray', linewidth=6, alpha=0.4)] if xs else []
    loss_ax.legend(handles, [label for label, _ in drawn] + [styles[key][1] for key in shown] + references,
                   loc='upper right', fontsize='small')  # losses fall: that corner is free, and 'best' is slow
    losses = [v for _, s in drawn for key in styles if key in s for v in s[key][1] if v > 0]
    if losses and max(losses) >= 2 * min(losses):  # a fall by half or more: the late, small gains stay visible
        loss_ax.set_yscale('log')
        # plain numbers (2, 3, 4 rather than 2x10^0), the minor ticks labeled too when the axis spans under a decade
        loss_ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        loss_ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    loss_ax.set_ylabel(ylabel)
    bpb = drawn[0][1].get('val_bpb') if y == 'loss' and len(drawn) == 1 else None
    if bpb:  # the same val batches at every evaluation: val bpb is val loss times one number
        to_bpb = bpb[1][-1] / dict(zip(*drawn[0][1]['val_loss']))[bpb[0][-1]]
        loss_ax.secondary_yaxis('right', functions=(lambda v: v * to_bpb, lambda v: v / to_bpb)).set_ylabel(
            'val bits per byte')
    lr_ax.set_ylabel('learning rate')
    lr_ax.ticklabel_format(axis='y', style='sci', scilimits=(-2, 3))
    if hellaswag:
        axes[2].set_ylabel('HellaSwag acc_norm')
    axes[-1].set_xlabel(XS[x])
    for ax in axes:
        ax.grid(True, which='major', alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=os.path.splitext(path)[1][1:].lower() or 'png', dpi=100)
    return fig
