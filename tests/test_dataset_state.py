"""A dataset folder is never read in a mixed state: re-preparing it in place (another corpus or tokenizer) and
killing the preparation between its renames leaves a folder that train.py refuses, never one it trains on."""
import os
import shutil
import signal

import pytest

from helpers import ROOT, assert_one_line_error, make_text, run

DIES_AFTER_RENAMING = '''
import os, runpy, signal, sys
real_replace = os.replace
def replace_then_die(src, dst):
    real_replace(src, dst)
    if os.path.basename(dst) == {name!r}:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace_then_die
sys.argv = ['prepare.py', {corpus!r}, '--out_dir=' + {out_dir!r}, '--tokenizer=char', '--num_proc=1']
runpy.run_path(os.path.join({root!r}, 'prepare.py'), run_name='__main__')
'''


def prepare(corpus, out_dir):
    result = run('prepare.py', corpus, f'--out_dir={out_dir}', '--tokenizer=char', '--num_proc=1')
    assert result.returncode == 0, result.stderr


def train(data_dir, out_dir):
    return run('train.py', f'--data_dir={data_dir}', f'--out_dir={out_dir}', '--device=cpu', '--n_layer=1',
               '--n_head=2', '--n_embd=16', '--block_size=16', '--batch_size=2', '--gradient_accumulation_steps=1',
               '--eval_iters=2', '--max_iters=2')


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    """A folder prepare.py made of make_text(20_000, seed=1) (read only: a test copies it to change it)."""
    tmp = tmp_path_factory.mktemp('prepared')
    (tmp / 'old.txt').write_text(make_text(20_000, seed=1))
    prepare(str(tmp / 'old.txt'), tmp / 'data')
    return tmp / 'data'


@pytest.mark.parametrize('killed_after', ['meta.pkl', 'val.bin'])
def test_a_preparation_killed_between_its_renames_is_never_read(prepared, tmp_path, killed_after):
    new = tmp_path / 'new.txt'
    new.write_text(make_text(30_000, seed=2).upper())  # another vocabulary, other sizes
    data = tmp_path / 'data'
    shutil.copytree(prepared, data)
    script = DIES_AFTER_RENAMING.format(root=ROOT, name=killed_after, corpus=str(new), out_dir=str(data))
    assert run('-c', script).returncode == -signal.SIGKILL
    assert not (data / 'train.bin').exists()  # the old set's train.bin went first
    result = train(data, tmp_path / 'out')
    assert_one_line_error(result)
    assert result.stderr.startswith(f'error: no training data at {data}/train.bin')
    prepare(str(new), data)  # the same command again completes the new set
    assert train(data, tmp_path / 'out').returncode == 0


def test_bins_of_another_preparation_are_refused(prepared, tmp_path):
    """Bins copied in beside a meta.pkl they do not belong to: the token counts in meta.pkl tell."""
    (tmp_path / 'b.txt').write_text(make_text(30_000, seed=1))
    shutil.copytree(prepared, tmp_path / 'a')
    prepare(str(tmp_path / 'b.txt'), tmp_path / 'b')
    shutil.copy(tmp_path / 'b' / 'train.bin', tmp_path / 'a' / 'train.bin')
    result = train(tmp_path / 'a', tmp_path / 'out')
    assert_one_line_error(result, 'train.bin holds 27,000 tokens but meta.pkl says 18,000', 'mixes two preparations')
    assert not os.path.exists(tmp_path / 'out' / 'ckpt.pt')
