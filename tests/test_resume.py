"""Exact resume and no lost runs, proved as a user meets them: scripts run as processes, killed with SIGKILL at
random moments, under torchrun, into folders that hold other runs."""
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
from conftest import ROOT, write_char_dataset

TINY = ['--device=cpu', '--dtype=float32', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16',
        '--batch_size=2', '--eval_iters=4', '--log_interval=1', '--dropout=0.1', '--learning_rate=1e-3',
        '--warmup_iters=10']


@pytest.fixture
def data_dir(tmp_path):
    return write_char_dataset(tmp_path / 'data')


def command(*argv, procs=1):
    if procs == 1:
        return [sys.executable, 'train.py', *map(str, argv)]
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={procs}', 'train.py',
            *map(str, argv)]


# one thread per process in every run: CPU kernels sum in another order on another number of threads
ENV = dict(os.environ, OMP_NUM_THREADS='1')


def train(*argv, procs=1):
    result = subprocess.run(command(*argv, procs=procs), cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def metrics(out_dir):
    """metrics.jsonl read strictly: NaN or Infinity literals are errors, as in other languages' JSON readers."""
    def refuse(name):
        raise ValueError(f'{name} is not JSON')
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def values(records):
    """What a run computed, without the timings."""
    return [(r['iter'], r.get('loss'), r.get('lr'), r.get('train_loss'), r.get('val_loss')) for r in records]


@pytest.mark.slow
def test_twenty_random_kills_change_nothing(data_dir, tmp_path):
    """A 300-iteration run killed with SIGKILL 20 times at random moments (in a step, an eval, a save), each time
    continued with --init_from=resume (or started again when no checkpoint was saved yet), logs exactly the
    losses of the uninterrupted run, bit for bit, one record per iteration and eval, and leaves no temporary file."""
    run = [*TINY, f'--data_dir={data_dir}', '--max_iters=300', '--eval_interval=10', '--lr_decay_iters=300']
    t0 = time.time()
    train(*run, f"--out_dir={tmp_path / 'start'}", '--max_iters=0')
    startup = time.time() - t0  # imports, setup and an eval: the kills scale with the machine's speed
    whole = tmp_path / 'whole'
    t0 = time.time()
    train(*run, f'--out_dir={whole}')
    training = max(time.time() - t0 - startup, 0.1)
    killed = tmp_path / 'killed'

    def init_from():
        return f"--init_from={'resume' if os.path.exists(killed / 'ckpt.pt') else 'scratch'}"
    rng = random.Random(0)
    kills, finished = 0, False
    while kills < 20 and not finished:
        proc = subprocess.Popen(command(*run, f'--out_dir={killed}', init_from()), cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # anywhere from the imports to a tenth of the training in: 20 kills fall before the run can end
        time.sleep(rng.uniform(0.5 * startup, startup + training / 10))
        finished = proc.poll() is not None
        if finished:
            assert proc.returncode == 0
        else:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
    if not finished:
        train(*run, f'--out_dir={killed}', init_from())
    assert kills >= 10  # the loop kills 20 times unless the run ends first
    assert values(metrics(killed)) == values(metrics(whole))
    a, b = checkpoint.load(whole / 'ckpt.pt')['model'], checkpoint.load(killed / 'ckpt.pt')['model']
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert glob.glob(str(killed / '.*.tmp')) == []


def test_two_process_resume_continues_every_dropout_stream(data_dir, tmp_path):
    """torchrun with 2 processes, dropout on: 8 iterations in one go == 4, then a resume to 8."""
    run = [*TINY, f'--data_dir={data_dir}', '--gradient_accumulation_steps=2', '--eval_interval=4',
           '--lr_decay_iters=8']
    train(*run, f'--out_dir={tmp_path / "whole"}', '--max_iters=8', procs=2)
    train(*run, f'--out_dir={tmp_path / "split"}', '--max_iters=4', procs=2)
    assert len(checkpoint.load(tmp_path / 'split' / 'ckpt.pt')['rng']) == 2  # one state per process
    train(*run, f'--out_dir={tmp_path / "split"}', '--max_iters=8', '--init_from=resume', procs=2)
    assert values(metrics(tmp_path / 'split')) == values(metrics(tmp_path / 'whole'))


def test_the_eval_does_not_depend_on_the_number_of_processes(data_dir, tmp_path):
    """The same checkpoint gives the same train and val loss, to the last bit, on 1 and on 2 processes."""
    run = [*TINY, f'--data_dir={data_dir}', '--eval_interval=5', '--eval_iters=7']  # 7: uneven between 2
    train(*run, f'--out_dir={tmp_path / "one"}', '--max_iters=5')
    os.makedirs(tmp_path / 'two')
    for name in ('ckpt.pt', 'metrics.jsonl'):
        (tmp_path / 'two' / name).write_bytes((tmp_path / 'one' / name).read_bytes())
    # resuming at max_iters evaluates the checkpoint once and logs it
    train(*run, f'--out_dir={tmp_path / "one"}', '--max_iters=5', '--init_from=resume')
    train(*run, f'--out_dir={tmp_path / "two"}', '--max_iters=5', '--init_from=resume', procs=2)
    one, two = metrics(tmp_path / 'one')[-1], metrics(tmp_path / 'two')[-1]
    assert one['iter'] == two['iter'] == 5
    assert (one['train_loss'], one['val_loss']) == (two['train_loss'], two['val_loss'])


def test_a_new_run_never_replaces_an_existing_one(data_dir, tmp_path):
    run = [*TINY, f'--data_dir={data_dir}', f'--out_dir={tmp_path}', '--eval_interval=5', '--max_iters=5']
    train(*run)
    before = (tmp_path / 'ckpt.pt').read_bytes(), (tmp_path / 'metrics.jsonl').read_text()
    result = subprocess.run(command(*run), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count('\n') == 1
    assert '--init_from=resume' in result.stderr and '--overwrite=True' in result.stderr
    assert ((tmp_path / 'ckpt.pt').read_bytes(), (tmp_path / 'metrics.jsonl').read_text()) == before
    train(*run, '--overwrite=True', '--seed=7')  # asked for: a new run, and a new log
    assert [r['iter'] for r in metrics(tmp_path)] == [0, 1, 2, 3, 4, 5, 5]


def test_a_diverging_run_logs_valid_json(data_dir, tmp_path):
    run = [*TINY, f'--data_dir={data_dir}', f'--out_dir={tmp_path}', '--eval_interval=5']
    train(*run, '--max_iters=5')
    result = subprocess.run(command(*run, '--init_from=resume', '--max_iters=10', '--learning_rate=1e38',
                                    '--grad_clip=0', '--warmup_iters=0', '--decay_lr=False', '--eval_interval=1'),
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and 'NaN or infinite' in result.stderr
    records = metrics(tmp_path)  # strict JSON: a NaN loss is written as null
    assert any(r.get('val_loss', 0) is None for r in records)


def test_a_killed_save_leaves_no_temporary_file_behind(tmp_path):
    """SIGKILL in the middle of writing a checkpoint leaves a hidden temporary file that no process can remove;
    the next save removes it (on OpenWebText's train.bin that file is 17 GB)."""
    path = tmp_path / 'ckpt.pt'
    script = f'''
import os, signal, sys, torch
sys.path.insert(0, {ROOT!r})
import checkpoint
def dying_save(obj, f):
    with open(f, 'wb') as out:
        out.write(b'x' * 100_000)
        out.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
checkpoint.save({{'model': {{}}, 'model_args': {{}}}}, {str(path)!r})
'''
    assert subprocess.run([sys.executable, '-c', script]).returncode == -9
    assert len(glob.glob(str(tmp_path / '.ckpt.pt.*.tmp'))) == 1 and not path.exists()
    checkpoint.save({'model': {}, 'model_args': {}}, path)
    assert os.listdir(tmp_path) == ['ckpt.pt']
