"""
One training run per out_dir (issue 20): train.py holds an exclusive lock on out_dir/.run.lock for the run's life.
A second run into the folder, fresh or --init_from=resume, is refused in one line that names the running one,
and leaves the first run's checkpoint and metrics intact; the lock goes with its process, even after kill -9.
"""

import os
import signal
import time

from helpers import RUN, TINY, assert_one_line_error, finish, read_metrics, run, start


def wait_for(path, process, timeout=60):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()[1]
        assert time.time() < deadline, f'{path} did not appear'
        time.sleep(0.05)


def test_second_run_into_one_folder_is_refused(char_data, tmp_path):
    out = tmp_path / 'out'
    # a first run long enough to be running while the others start: many cheap iterations, a checkpoint at 4
    first = start('train.py', f'--data_dir={char_data}', f'--out_dir={out}', *TINY, '--max_iters=100000',
                  '--lr_decay_iters=100000')
    try:
        wait_for(out / 'ckpt.pt', first)
        lock = (out / '.run.lock').read_text()
        assert lock.startswith(f'{first.pid}: ') and 'train.py' in lock
        fresh = start('train.py', f'--data_dir={char_data}', f'--out_dir={out}', *TINY, '--overwrite=True')
        resume = start('train.py', f'--data_dir={char_data}', f'--out_dir={out}', *RUN, '--init_from=resume',
                       '--max_iters=100000')
        for result in (finish(fresh), finish(resume)):
            assert_one_line_error(result, f'{out} is in use by another training run (pid {first.pid}: ', 'train.py',
                                  'choose another --out_dir')
        assert first.poll() is None, 'the first run must still be running'
        first.send_signal(signal.SIGKILL)  # the lock must not outlive its process
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert [r['iter'] for r in read_metrics(out) if 'loss' in r][:4] == [1, 2, 3, 4]  # the first run's, not overwritten
    # after kill -9: the stale lock file holds no lock, and a resume goes on from the first run's checkpoint
    result = run('train.py', f'--data_dir={char_data}', f'--out_dir={out}', *RUN, '--init_from=resume', '--max_iters=8')
    assert result.returncode == 0, result.stderr
    assert 'from iteration ' in result.stdout and not (out / '.run.lock').exists()


def test_a_refused_run_leaves_no_folder(tmp_path):
    """The lock creates out_dir; a run that fails before writing anything removes it again."""
    result = run('train.py', f'--data_dir={tmp_path}/no_data', f'--out_dir={tmp_path}/out', *TINY)
    assert result.returncode == 1 and not (tmp_path / 'out').exists(), result.stderr
