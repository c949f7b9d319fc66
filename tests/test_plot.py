"""Loss curves: the series drawn are exactly the values in metrics.jsonl, train.py writes out_dir/loss.png after every
evaluation and at the end (and trains on when it cannot), and plot.py overlays runs or fails in one line."""
import copy
import json
import os
import shutil
import sys

import matplotlib.image
import pytest

import curves
import train
from helpers import assert_one_line_error, read_metrics, run

TINY = ['--device=cpu', '--compile=False', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16',
        '--batch_size=2', '--gradient_accumulation_steps=2', '--eval_iters=2', '--warmup_iters=2',
        '--learning_rate=1e-3', '--dataset=tiny']
TOKENS_PER_ITER = 2 * 2 * 16  # gradient_accumulation_steps x batch_size x block_size


def train_process(data_dir, out_dir, *argv):
    result = run('train.py', *TINY, f'--data_dir={data_dir}', f'--out_dir={out_dir}', *argv)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope='module')
def runs(char_data, tmp_path_factory):
    """Two runs of train.py as processes: 'a' logs every 2nd of 6 iterations and evaluates every 3rd; 'b' runs 4
    iterations, then is resumed to 6 with twice the batch size."""
    root = tmp_path_factory.mktemp('runs')
    train_process(char_data, root / 'a', '--max_iters=6', '--lr_decay_iters=6', '--eval_interval=3',
                  '--log_interval=2')
    train_process(char_data, root / 'b', '--max_iters=4', '--lr_decay_iters=6', '--eval_interval=2')
    train_process(char_data, root / 'b', '--max_iters=6', '--lr_decay_iters=6', '--eval_interval=2',
                  '--init_from=resume', '--batch_size=4')
    return root


def assert_png(path, size):
    """A whole PNG file (its signature, and matplotlib reads it back) of size (height, width) pixels."""
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert os.path.getsize(path) > 10_000  # a picture, not an empty figure
    assert matplotlib.image.imread(path).shape[:2] == size


def test_series_of_a_real_run_are_the_values_in_metrics_jsonl(runs):
    records = read_metrics(runs / 'a')
    steps = [r for r in records if 'loss' in r]
    evals = [r for r in records if 'val_loss' in r]
    assert [r['iter'] for r in steps] == [2, 4, 6] and [r['iter'] for r in evals] == [0, 3, 6]
    assert curves.series(records) == {
        'loss': ([2, 4, 6], [r['loss'] for r in steps]),
        'train_loss': ([0, 3, 6], [r['train_loss'] for r in evals]),
        'val_loss': ([0, 3, 6], [r['val_loss'] for r in evals]),
        'val_bpb': ([0, 3, 6], [r['val_bpb'] for r in evals]),
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
    records = read_metrics(runs / 'b')
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
    for name in ('a', 'b'):
        assert_png(runs / name / 'loss.png', (600, 800))
        assert [f for f in os.listdir(runs / name) if f.endswith('.tmp')] == []


def assert_picture_of_metrics(out_dir):
    """out_dir/loss.png is the picture of out_dir/metrics.jsonl, as plot.py draws that run."""
    expected = out_dir.parent / f'{out_dir.name}.png'
    curves.draw([(out_dir.name, read_metrics(out_dir))], expected)
    assert (out_dir / 'loss.png').read_bytes() == expected.read_bytes()


def test_loss_png_is_redrawn_after_each_evaluation_and_at_the_end(char_data, tmp_path, monkeypatch):
    """While a run trains, loss.png shows each evaluation (but the first, which has no step to show with it) before
    the next one comes, and is not drawn at every step; at the end it is the picture of the whole of metrics.jsonl,
    also when an error stops the run."""
    drawings = []  # the records each drawing of loss.png showed
    real_draw = curves.draw

    def recording_draw(runs, path, x='iter', y='loss', ref=None):
        drawings.append(copy.deepcopy(runs[0][1]))
        real_draw(runs, path, x, y, ref)
    monkeypatch.setattr(curves, 'draw', recording_draw)
    argv = [*TINY, f'--data_dir={char_data}', '--max_iters=5', '--eval_interval=2']
    train.main([*argv, f'--out_dir={tmp_path / "a"}'])
    records = read_metrics(tmp_path / 'a')
    assert all(drawing == records[:len(drawing)] for drawing in drawings)  # what metrics.jsonl held then
    evaluations = [r for r in records if 'val_loss' in r]
    assert [r['iter'] for r in evaluations] == [0, 2, 4, 5]
    for evaluation, following in zip(evaluations[1:], evaluations[2:] + [None]):
        assert any(evaluation in drawing and following not in drawing for drawing in drawings), evaluation
    assert len(drawings) <= len(evaluations) + 1 < len(records)
    assert drawings[-1] == records
    assert_png(tmp_path / 'a' / 'loss.png', (600, 800))
    assert_picture_of_metrics(tmp_path / 'a')

    drawings.clear()
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
    records = read_metrics(tmp_path / 'b')
    assert [r['iter'] for r in records if 'loss' in r] == [1, 2, 3] and drawings == [records]
    assert_picture_of_metrics(tmp_path / 'b')


def test_a_failure_to_draw_does_not_stop_training(char_data, tmp_path, monkeypatch, capsys):
    """Without matplotlib (curves cannot be imported) a run trains and warns once, in one line."""
    monkeypatch.setitem(sys.modules, 'curves', None)
    train.main([*TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--max_iters=4', '--eval_interval=2'])
    warnings = [line for line in capsys.readouterr().out.splitlines() if 'loss.png' in line]
    assert len(warnings) == 1 and warnings[0].startswith('warning: cannot draw') and 'training goes on' in warnings[0]
    assert sorted(os.listdir(tmp_path)) == ['ckpt.pt', 'metrics.jsonl']
    assert [r['iter'] for r in read_metrics(tmp_path) if 'val_loss' in r] == [0, 2, 4]


def test_plot_overlays_runs(runs, tmp_path):
    result = run('plot.py', runs / 'a', runs / 'b', '--x=tokens', f'--out={tmp_path / "both.png"}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f'wrote {tmp_path / "both.png"}: 2 runs against tokens'
    assert_png(tmp_path / 'both.png', (600, 800))
    shutil.copytree(runs / 'a', tmp_path / 'a')
    result = run('plot.py', 'a', '--x=seconds', cwd=tmp_path)  # the default --out: runs.png in the current folder
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
        ((tmp_path / 'old', '--z=1'), "unknown config key 'z'"),
        ((tmp_path / 'old', '--y=1'), '--y=1 is not one of loss, bpb'),
        ((tmp_path / 'old', '--y=bpb'), 'has no val_bpb'),
    ]
    for argv, words in cases:
        assert_one_line_error(run('plot.py', *argv, cwd=tmp_path), words)
    assert not os.path.exists(tmp_path / 'runs.png')
