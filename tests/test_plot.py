"""Loss curves: the series drawn are exactly the values in metrics.jsonl, train.py writes out_dir/loss.png after every
evaluation and at the end (and trains on when it cannot), and plot.py overlays runs or fails in one line."""
import json
import os
import shutil
import subprocess
import sys

import matplotlib.image
import pytest

import curves
import train
from conftest import ROOT, write_char_dataset

TINY = ['--device=cpu', '--compile=False', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16',
        '--batch_size=2', '--gradient_accumulation_steps=2', '--eval_iters=2', '--warmup_iters=2',
        '--learning_rate=1e-3', '--dataset=tiny']
TOKENS_PER_ITER = 2 * 2 * 16  # gradient_accumulation_steps x batch_size x block_size


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return write_char_dataset(tmp_path_factory.mktemp('data'))


def train_process(data_dir, out_dir, *argv):
    result = subprocess.run([sys.executable, 'train.py', *TINY, f'--data_dir={data_dir}', f'--out_dir={out_dir}',
                             *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope='module')
def runs(data_dir, tmp_path_factory):
    """Two runs of train.py as processes: 'a' logs every 2nd of 6 iterations and evaluates every 3rd; 'b' runs 4
    iterations, then is resumed to 6 with twice the batch size."""
    root = tmp_path_factory.mktemp('runs')
    train_process(data_dir, root / 'a', '--max_iters=6', '--lr_decay_iters=6', '--eval_interval=3',
                  '--log_interval=2')
    train_process(data_dir, root / 'b', '--max_iters=4', '--lr_decay_iters=6', '--eval_interval=2')
    train_process(data_dir, root / 'b', '--max_iters=6', '--lr_decay_iters=6', '--eval_interval=2',
                  '--init_from=resume', '--batch_size=4')
    return root


def read_lines(out_dir):
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def assert_png(path, size):
    """A whole PNG file (its signature, and matplotlib reads it back) of size (height, width) pixels."""
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert os.path.getsize(path) > 10_000  # a picture, not an empty figure
    assert matplotlib.image.imread(path).shape[:2] == size


def test_series_of_a_real_run_are_the_values_in_metrics_jsonl(runs):
    records = read_lines(runs / 'a')
    steps = [r for r in records if 'loss' in r]
    evals = [r for r in records if 'val_loss' in r]
    assert [r['iter'] for r in steps] == [2, 4, 6] and [r['iter'] for r in evals] == [0, 3, 6]
    assert curves.series(records) == {
        'loss': ([2, 4, 6], [r['loss'] for r in steps]),
        'train_loss': ([0, 3, 6], [r['train_loss'] for r in evals]),
        'val_loss': ([0, 3, 6], [r['val_loss'] for r in evals]),
        'lr': ([2, 4, 6], [r['lr'] for r in steps]),
    }
    tokens = curves.series(records, x='tokens')
    assert tokens['loss'] == ([2 * TOKENS_PER_ITER, 4 * TOKENS_PER_ITER, 6 * TOKENS_PER_ITER], [r['loss'] for r in steps])
    assert tokens['val_loss'][0] == [0, 3 * TOKENS_PER_ITER, 6 * TOKENS_PER_ITER]
    # each logged step's time stands for the 2 iterations since the one logged before it
    ms = [r['ms'] for r in steps]
    at = [2 * ms[0] / 1000, 2 * (ms[0] + ms[1]) / 1000, 2 * (ms[0] + ms[1] + ms[2]) / 1000]
    seconds = curves.series(records, x='seconds')
    assert seconds['loss'][0] == pytest.approx(at, rel=1e-12) and seconds['loss'][1] == [r['loss'] for r in steps]
    assert seconds['val_loss'][0] == pytest.approx([0, at[0], at[2]], rel=1e-12)


def test_tokens_count_on_through_a_resume_with_another_batch_size(runs):
    records = read_lines(runs / 'b')
    assert [r['iter'] for r in records if 'loss' in r] == [1, 2, 3, 4, 5, 6]
    tokens = {r['iter']: r['tokens'] for r in records}
    assert tokens == {i: i * TOKENS_PER_ITER if i <= 4 else (4 + 2 * (i - 4)) * TOKENS_PER_ITER for i in range(7)}
    assert curves.series(records, x='tokens')['loss'][0] == [tokens[i] for i in range(1, 7)]


def test_series_skip_nulls_and_draw_hellaswag(tmp_path):
    records = [
        {'iter': 0, 'tokens': 0, 'train_loss': 4.0, 'val_loss': None},
        {'iter': 0, 'tokens': 0, 'hellaswag_acc': 0.25, 'hellaswag_acc_norm': 0.24, 'hellaswag_n': 100},
        {'iter': 10, 'tokens': 100, 'loss': 3.5, 'lr': 1e-3, 'ms': 100.0, 'mfu': None},
        {'iter': 20, 'tokens': 200, 'loss': None, 'lr': 9e-4, 'ms': 300.0, 'mfu': 0.1},
        {'iter': 30, 'loss': 3.0, 'lr': 8e-4, 'ms': 50.0, 'mfu': 0.1},  # a record without tokens (an older train.py)
        {'iter': 30, 'tokens': 300, 'train_loss': 3.1, 'val_loss': 3.2},
        {'iter': 30, 'tokens': 300, 'hellaswag_acc': 0.27, 'hellaswag_acc_norm': 0.29, 'hellaswag_n': 100},
    ]
    assert curves.series(records) == {
        'loss': ([10, 30], [3.5, 3.0]),
        'train_loss': ([0, 30], [4.0, 3.1]),
        'val_loss': ([30], [3.2]),
        'lr': ([10, 20, 30], [1e-3, 9e-4, 8e-4]),
        'hellaswag_acc_norm': ([0, 30], [0.24, 0.29]),
    }
    assert curves.series(records, x='tokens')['lr'] == ([100, 200], [1e-3, 9e-4])
    # each step's time counts for the 10 iterations since the step before it
    assert curves.series(records, x='seconds')['lr'] == (pytest.approx([1.0, 4.0, 4.5]), [1e-3, 9e-4, 8e-4])
    assert curves.series([], x='tokens') == {}
    with pytest.raises(ValueError, match="x='steps' is not one of iter, tokens, seconds"):
        curves.series(records, x='steps')
    curves.draw([('with', records), ('without', [r for r in records if 'hellaswag_n' not in r])], tmp_path / 'h.png')
    assert_png(tmp_path / 'h.png', (750, 800))  # a third axis: HellaSwag's
    curves.draw([('without', [r for r in records if 'hellaswag_n' not in r])], tmp_path / 'l.png')
    assert_png(tmp_path / 'l.png', (600, 800))
    assert sorted(os.listdir(tmp_path)) == ['h.png', 'l.png']


def test_train_writes_loss_png(runs):
    for run in ('a', 'b'):
        assert_png(runs / run / 'loss.png', (600, 800))
        assert [f for f in os.listdir(runs / run) if f.endswith('.tmp')] == []


def test_loss_png_is_drawn_after_every_evaluation_and_at_the_end(data_dir, tmp_path, monkeypatch):
    drawn = []  # the last iteration in metrics.jsonl at each drawing
    real_draw = curves.draw

    def recording_draw(runs, path, x='iter'):
        drawn.append(runs[0][1][-1]['iter'])
        real_draw(runs, path, x)
    monkeypatch.setattr(curves, 'draw', recording_draw)
    argv = [*TINY, f'--data_dir={data_dir}', '--max_iters=5', '--eval_interval=2']
    train.main([*argv, f'--out_dir={tmp_path / "a"}'])
    # at the step after each evaluation that follows training (after the save), and at the end for the last one
    assert drawn == [3, 5, 5]
    assert_png(tmp_path / 'a' / 'loss.png', (600, 800))

    drawn.clear()
    steps = 0

    def failing_step(*args):  # a run stopped by an error after 3 steps: the end draws them
        nonlocal steps
        steps += 1
        if steps > 3:
            raise ValueError('stop')
        return real_step(*args)
    real_step = train.train_step
    monkeypatch.setattr(train, 'train_step', failing_step)
    with pytest.raises(ValueError, match='stop'):
        train.main([*argv, f'--out_dir={tmp_path / "b"}', '--eval_interval=100'])
    assert drawn == [3]


def test_a_failure_to_draw_does_not_stop_training(data_dir, tmp_path, monkeypatch, capsys):
    """Without matplotlib (curves cannot be imported) a run trains and warns once, in one line."""
    monkeypatch.setitem(sys.modules, 'curves', None)
    train.main([*TINY, f'--data_dir={data_dir}', f'--out_dir={tmp_path}', '--max_iters=4', '--eval_interval=2'])
    warnings = [line for line in capsys.readouterr().out.splitlines() if 'loss.png' in line]
    assert len(warnings) == 1 and warnings[0].startswith('warning: cannot draw') and 'training goes on' in warnings[0]
    assert sorted(os.listdir(tmp_path)) == ['ckpt.pt', 'metrics.jsonl']
    assert [r['iter'] for r in read_lines(tmp_path) if 'val_loss' in r] == [0, 2, 4]


def plot(*argv, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'plot.py'), *map(str, argv)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_plot_overlays_runs(runs, tmp_path):
    result = plot(runs / 'a', runs / 'b', '--x=tokens', f'--out={tmp_path / "both.png"}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f'wrote {tmp_path / "both.png"}: 2 runs against tokens'
    assert_png(tmp_path / 'both.png', (600, 800))
    shutil.copytree(runs / 'a', tmp_path / 'a')
    result = plot('a', '--x=seconds', cwd=tmp_path)  # the default --out: runs.png in the current folder
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / 'runs.png', (600, 800))


def test_plot_errors_are_one_line(tmp_path):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'old').mkdir()  # a run logged before train.py recorded tokens
    with open(tmp_path / 'old' / 'metrics.jsonl', 'w') as f:
        f.write(json.dumps({'iter': 1, 'loss': 3.0, 'lr': 1e-3, 'ms': 10.0, 'mfu': None}) + '\n')
    cases = [
        ((tmp_path / 'nothing',), f'{tmp_path / "nothing"} does not exist'),
        ((tmp_path / 'empty',), f'{tmp_path / "empty"} has no metrics.jsonl'),
        ((tmp_path / 'old', '--x=steps'), '--x=steps is not one of iter, tokens, seconds'),
        ((tmp_path / 'old', '--x=tokens'), 'no record has "tokens"'),
        ((), 'no run: write python plot.py OUT_DIR'),
        ((tmp_path / 'old', '--y=1'), "unknown config key 'y'"),
    ]
    for argv, words in cases:
        result = plot(*argv, cwd=tmp_path)
        assert result.returncode == 1 and result.stderr.startswith('error: ') and words in result.stderr, result.stderr
        assert result.stderr.strip().count('\n') == 0 and 'Traceback' not in result.stderr
    assert not os.path.exists(tmp_path / 'runs.png')
