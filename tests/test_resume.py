"""Exact resume and no lost runs, proved as a user meets them: scripts run as processes, killed with SIGKILL at
random moments, under torchrun, into folders that hold other runs."""
import glob
import os
import random
import signal
import time

import pytest
import torch

import checkpoint
from helpers import assert_one_line_error, read_metrics, run, start, without_timings

TINY = ['--device=cpu', '--dtype=float32', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16',
        '--batch_size=2', '--eval_iters=4', '--log_interval=1', '--dropout=0.1', '--learning_rate=1e-3',
        '--warmup_iters=10']


def train(*argv, processes=None):
    result = run('train.py', *argv, processes=processes)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_twenty_random_kills_change_nothing(char_data, tmp_path):
    """A 300-iteration run killed with SIGKILL 20 times at random moments (in a step, an eval, a save), each time
    continued with --init_from=resume (or started again when no checkpoint was saved yet), logs exactly the
    losses of the uninterrupted run, bit for bit, one record per iteration and eval, and leaves no temporary file."""
    argv = [*TINY, f'--data_dir={char_data}', '--max_iters=300', '--eval_interval=10', '--lr_decay_iters=300']
    t0 = time.time()
    train(*argv, f"--out_dir={tmp_path / 'start'}", '--max_iters=0')
    startup = time.time() - t0  # imports, setup and an eval: the kills scale with the machine's speed
    whole = tmp_path / 'whole'
    t0 = time.time()
    train(*argv, f'--out_dir={whole}')
    training = max(time.time() - t0 - startup, 0.1)
    killed = tmp_path / 'killed'

    def init_from():
        return f"--init_from={'resume' if os.path.exists(killed / 'ckpt.pt') else 'scratch'}"
    rng = random.Random(0)
    kills, finished = 0, False
    while kills < 20 and not finished:
        proc = start('train.py', *argv, f'--out_dir={killed}', init_from(), capture=False)
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
        train(*argv, f'--out_dir={killed}', init_from())
    assert kills >= 10  # the loop kills 20 times unless the run ends first
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


def test_a_new_run_never_replaces_an_existing_one(char_data, tmp_path):
    argv = [*TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--eval_interval=5', '--max_iters=5']
    train(*argv)
    before = (tmp_path / 'ckpt.pt').read_bytes(), (tmp_path / 'metrics.jsonl').read_text()
    assert_one_line_error(run('train.py', *argv), '--init_from=resume', '--overwrite=True')
    assert ((tmp_path / 'ckpt.pt').read_bytes(), (tmp_path / 'metrics.jsonl').read_text()) == before
    train(*argv, '--overwrite=True', '--seed=7')  # asked for: a new run, and a new log
    assert [r['iter'] for r in read_metrics(tmp_path)] == [0, 1, 2, 3, 4, 5, 5]


def test_a_diverging_run_logs_valid_json(char_data, tmp_path):
    argv = [*TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--eval_interval=5']
    train(*argv, '--max_iters=5')
    result = run('train.py', *argv, '--init_from=resume', '--max_iters=10', '--learning_rate=1e38', '--grad_clip=0',
                 '--warmup_iters=0', '--decay_lr=False', '--eval_interval=1')
    assert_one_line_error(result, 'NaN or infinite')
    records = read_metrics(tmp_path)  # strict JSON: a NaN loss is written as null
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
