"""
Full disks are one line and the previous files survive (issue 20): train.py's save (torch reports a full disk as a
RuntimeError), export.py --force (safetensors as its own error), prepare.py (it died of SIGBUS writing its bins
through a memmap). Each command runs with its output on a small tmpfs (mounted here when this user may; else
RLIMIT_FSIZE makes a file past the limit fail with EFBIG, the same one-line path).
"""

import contextlib
import os
import resource
import signal
import subprocess
import uuid

import pytest

from helpers import TINY, assert_one_line_error, make_text, run

LIMIT = 256 * 1024


@pytest.fixture
def small_disk(tmp_path):
    """(folder, preexec_fn): a 256 KiB tmpfs, or a tmp folder and a file-size limit of 256 KiB for the process."""
    folder = tmp_path / 'disk'
    folder.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={LIMIT}', 'tmpfs', str(folder)],
                      capture_output=True).returncode == 0:
        try:
            yield folder, None
        finally:
            subprocess.run(['umount', str(folder)], check=True)
        return

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
    yield folder, limit


def fill(folder, leave):
    """Fill the tmpfs at folder but `leave` bytes (does nothing under a file-size limit)."""
    with contextlib.suppress(OSError), open(os.path.join(folder, f'filler-{uuid.uuid4().hex}'), 'wb') as f:
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
        f.write(b'\0' * max(0, free - leave))


def test_train_save_on_a_full_disk(small_disk, char_data):
    disk, preexec = small_disk
    fill(disk, 40_000)  # room for metrics.jsonl and loss.png's first try, not for a 78 KB checkpoint
    result = run('train.py', f'--data_dir={char_data}', f'--out_dir={disk}/out', *TINY, '--n_embd=64',
                 preexec_fn=preexec)
    assert_one_line_error(result, f'could not save {disk}/out/ckpt.pt', 'free some disk space')
    assert not [n for n in os.listdir(disk / 'out') if n.endswith('.tmp')]


def test_export_force_on_a_full_disk_keeps_the_previous_export(small_disk, char_data, tmp_path):
    disk, preexec = small_disk
    result = run('train.py', f'--data_dir={char_data}', f'--out_dir={tmp_path}/run', *TINY)
    assert result.returncode == 0, result.stderr
    result = run('export.py', f'--out_dir={tmp_path}/run', f'--to={disk}/hf', preexec_fn=preexec)
    assert result.returncode == 0, result.stderr
    before = {n: (disk / 'hf' / n).read_bytes() for n in ('config.json', 'model.safetensors')}
    fill(disk, 2_000)
    result = run('train.py', f'--data_dir={char_data}', f'--out_dir={tmp_path}/run2', *TINY, '--n_embd=64',
                 preexec_fn=preexec)
    assert result.returncode == 0, result.stderr
    result = run('export.py', f'--out_dir={tmp_path}/run2', f'--to={disk}/hf', '--force=True', preexec_fn=preexec)
    assert_one_line_error(result, f'could not write {disk}/hf', 'files already there are unchanged', '--to')
    assert {n: (disk / 'hf' / n).read_bytes() for n in before} == before
    assert sorted(os.listdir(disk / 'hf')) == ['config.json', 'model.safetensors']


def test_prepare_on_a_full_disk(small_disk, tmp_path):
    """The tokenized pieces fit, the bins do not: one line, not SIGBUS; no half-written bin."""
    disk, preexec = small_disk
    text = tmp_path / 'corpus.txt'
    text.write_text(make_text(90_000))  # 180 KB of uint16 pieces, then 180 KB of bins
    result = run('prepare.py', text, f'--out_dir={disk}/data', '--tokenizer=char', '--num_proc=1', preexec_fn=preexec)
    assert_one_line_error(result, 'could not write', 'free some disk space', 'run the same command again')
    assert not os.path.exists(disk / 'data' / 'train.bin')
