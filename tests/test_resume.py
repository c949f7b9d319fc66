"""Exact resume and no lost runs, proved as a user meets them: scripts run as processes, killed with SIGKILL at
each moment of a run, under torchrun, into folders that hold other runs."""
import glob
import os
import shutil
import signal

import pytest
import torch

import checkpoint
from helpers import ROOT, assert_one_line_error, finish, read_metrics, run, start, without_timings

TINY = ['--device=cpu', '--dtype=float32', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16',
        '--batch_size=2', '--eval_iters=4', '--log_interval=1', '--dropout=0.1', '--learning_rate=1e-3',
        '--warmup_iters=10']


def train(*argv, processes=None):
    result = run('train.py', *argv, processes=processes)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# train.py (train.main, as `python train.py` runs it) in a process that SIGKILLs itself the n-th time it reaches a
# moment of the run: what a kill from outside at that moment leaves, reached every time, at once
KILLED_AT = f'''
import os, signal, sys
sys.path.insert(0, {ROOT!r})
import runlog, torch, train
moment, n = sys.argv[1], int(sys.argv[2])
estimate_loss, log_step, save, replace = train.estimate_loss, runlog.Log.step, torch.save, os.replace
counts = {{}}

def now(name):
    counts[name] = counts.get(name, 0) + 1
    return name == moment and counts[name] == n

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def evaluated(*args, **kwargs):
    losses = estimate_loss(*args, **kwargs)
    if now('eval'):  # computed, not yet logged or saved
        die()
    return losses

def stepped(self, *args, **kwargs):
    log_step(self, *args, **kwargs)
    if now('step'):  # logged, the next step not begun
        die()

def saving(obj, path):
    save(obj, path)
    if now('save'):  # half the checkpoint written
        os.truncate(path, os.path.getsize(path) // 2)
        die()

def replacing(src, dst):
    kind = 'ckpt' if str(dst).endswith('ckpt.pt') else 'log' if str(dst).endswith('metrics.jsonl') else 'other'
    if now(kind + ' rename'):  # the file written whole, not yet renamed
        die()
    replace(src, dst)
    if now(kind + ' renamed'):  # renamed, the folder not yet synced, nothing printed
        die()

train.estimate_loss, runlog.Log.step, torch.save, os.replace = evaluated, stepped, saving, replacing
train.main(sys.argv[3:])
'''

# (moment, n) of each kill, in order, a 60-iteration run saving at every 10th: what the run has then
KILLS = [
    ('eval', 1),  # in the first eval: no checkpoint yet, the next run starts again from scratch
    ('log rename', 1),  # while a new run replaces metrics.jsonl
    ('step', 15),  # between steps, 5 logged past the checkpoint of 10
    ('save', 1),  # half of the save at 20 written (its eval logged)
    ('ckpt rename', 1),  # the save at 20 written whole, not renamed
    ('ckpt renamed', 1),  # renamed, not synced: the next run resumes from 20
    ('log rename', 1),  # while the resumed run keeps metrics.jsonl's records up to its checkpoint
    ('eval', 2),  # in the eval at 30, after the resumed run's first one at 20
]


@pytest.mark.slow
def test_kills_at_every_moment_change_nothing(char_data, tmp_path):
    """A 60-iteration run killed with SIGKILL 8 times, at each moment of a run (an eval, between steps, a save half
    written, written but not renamed, renamed but not synced, metrics.jsonl being rewritten; before the first
    checkpoint and after a resume), each time continued with --init_from=resume (or started again when no
    checkpoint was saved yet), logs exactly the losses of the uninterrupted run, bit for bit, one record per
    iteration and eval, ends with its weights and leaves no temporary file."""
    argv = [*TINY, f'--data_dir={char_data}', '--max_iters=60', '--eval_interval=10', '--lr_decay_iters=60']
    whole = tmp_path / 'whole'
    killed = tmp_path / 'killed'
    script = tmp_path / 'killed_at.py'
    script.write_text(KILLED_AT)

    def init_from():
        return f"--init_from={'resume' if os.path.exists(killed / 'ckpt.pt') else 'scratch'}"
    runs = [start('train.py', *argv, f'--out_dir={whole}')]
    for moment, n in KILLS:
        result = run(str(script), moment, n, *argv, f'--out_dir={killed}', init_from())
        assert result.returncode == -signal.SIGKILL, (moment, n, result.stderr[-3000:])  # the moment came
    train(*argv, f'--out_dir={killed}', init_from())
    assert finish(runs[0]).returncode == 0
    assert without_timings(read_metrics(killed)) == without_timings(read_metrics(whole))
    a, b = checkpoint.load(whole / 'ckpt.pt')['model'], checkpoint.load(killed / 'ckpt.pt')['model']
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert glob.glob(str(killed / '.*.tmp')) == []


def test_two_process_resume_continues_every_dropout_stream(char_data, tmp_path):
    """torchrun with 2 processes, dropout on: 8 iterations in one go == 4, then a resume to 8."""
    argv = [*TINY, f'--data_dir={char_data}', '--gradient_accumulation_steps=2', '--eval_interval=4',
            '--lr_decay_iters=8']
    train(*argv, f'--out_dir={tmp_path / "whole"}', '--max_iters=8', processes=2)
    train(*argv, f'--out_dir={tmp_path / "split"}', '--max_iters=4', processes=2)
    assert len(checkpoint.load(tmp_path / 'split' / 'ckpt.pt')['rng']) == 2  # one state per process
    train(*argv, f'--out_dir={tmp_path / "split"}', '--max_iters=8', '--init_from=resume', processes=2)
    assert without_timings(read_metrics(tmp_path / 'split')) == without_timings(read_metrics(tmp_path / 'whole'))


def test_the_eval_does_not_depend_on_the_number_of_processes(char_data, tmp_path):
    """The same checkpoint gives the same train and val loss, to the last bit, on 1 and on 2 processes."""
    argv = [*TINY, f'--data_dir={char_data}', '--eval_interval=5', '--eval_iters=7']  # 7: uneven between 2
    train(*argv, f'--out_dir={tmp_path / "one"}', '--max_iters=5')
    os.makedirs(tmp_path / 'two')
    for name in ('ckpt.pt', 'metrics.jsonl'):
        (tmp_path / 'two' / name).write_bytes((tmp_path / 'one' / name).read_bytes())
    # resuming at max_iters evaluates the checkpoint once and logs it
    train(*argv, f'--out_dir={tmp_path / "one"}', '--max_iters=5', '--init_from=resume')
    train(*argv, f'--out_dir={tmp_path / "two"}', '--max_iters=5', '--init_from=resume', processes=2)
    one, two = read_metrics(tmp_path / 'one')[-1], read_metrics(tmp_path / 'two')[-1]
    assert one['iter'] == two['iter'] == 5
    assert (one['train_loss'], one['val_loss']) == (two['train_loss'], two['val_loss'])


@pytest.fixture(scope='module')
def five_iterations(char_data, tmp_path_factory):
    """(train.py's arguments, less out_dir; a finished run of 5 iterations with them) for the tests that go on
    from it (read only: a test copies it)."""
    argv = [*TINY, f'--data_dir={char_data}', '--eval_interval=5', '--max_iters=5']
    out_dir = tmp_path_factory.mktemp('five')
    train(*argv, f'--out_dir={out_dir}')
    return argv, out_dir


def test_a_new_run_never_replaces_an_existing_one(five_iterations, tmp_path):
    argv, trained = five_iterations
    out_dir = shutil.copytree(trained, tmp_path / 'run')
    argv = [*argv, f'--out_dir={out_dir}']
    before = (out_dir / 'ckpt.pt').read_bytes(), (out_dir / 'metrics.jsonl').read_text()
    assert_one_line_error(run('train.py', *argv), '--init_from=resume', '--overwrite=True')
    assert ((out_dir / 'ckpt.pt').read_bytes(), (out_dir / 'metrics.jsonl').read_text()) == before
    train(*argv, '--overwrite=True', '--seed=7')  # asked for: a new run, and a new log
    assert [r['iter'] for r in read_metrics(out_dir)] == [0, 1, 2, 3, 4, 5, 5]


def test_a_diverging_run_logs_valid_json(five_iterations, tmp_path):
    argv, trained = five_iterations
    out_dir = shutil.copytree(trained, tmp_path / 'run')
    result = run('train.py', *argv, f'--out_dir={out_dir}', '--init_from=resume', '--max_iters=10',
                 '--learning_rate=1e38', '--grad_clip=0', '--warmup_iters=0', '--decay_lr=False', '--eval_interval=1')
    assert_one_line_error(result, 'NaN or infinite')
    records = read_metrics(out_dir)  # strict JSON: a NaN loss is written as null
    assert any(r.get('val_loss', 0) is None for r in records)


def test_a_killed_save_keeps_the_previous_checkpoint_and_its_leftover_goes(tmp_path):
    """SIGKILL in the middle of writing a checkpoint leaves the previous one whole, and a hidden temporary file that
    no process can remove; the next save removes it (on OpenWebText's train.bin that file is 17 GB)."""
    path = tmp_path / 'ckpt.pt'
    checkpoint.save({'model': {'w': torch.ones(3)}, 'model_args': {}}, path)
    dies_in_its_save = f'''
import os, signal, torch
import checkpoint
def dying_save(obj, f):
    with open(f, 'wb') as out:
        out.write(b'x' * 100_000)
        out.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
checkpoint.save({{'model': {{'w': torch.zeros(3)}}, 'model_args': {{}}}}, {str(path)!r})
'''
    assert run('-c', dies_in_its_save).returncode == -signal.SIGKILL
    assert torch.equal(checkpoint.load(path)['model']['w'], torch.ones(3))
    assert len(glob.glob(str(tmp_path / '.ckpt.pt.*.tmp'))) == 1
    checkpoint.save({'model': {}, 'model_args': {}}, path)
    assert os.listdir(tmp_path) == ['ckpt.pt']
