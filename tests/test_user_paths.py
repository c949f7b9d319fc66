"""
The promises of issue 12, proved the way a user meets them: each script run as a fresh Python process on
small data made here (no ../shared). Bad input of any kind ends in one line on stderr, `error: ...`, and exit
code 1, never a traceback; a data file never runs code; sampling never emits an id the tokenizer cannot decode.
The commands of one test run side by side (starting Python and torch is most of their time). Two failures that
no command line can cause (out of memory, a full disk) are tested in-process, through configurator.cli as the
scripts call it.
"""

import errno
import os
import pickle

import numpy as np
import pytest
import torch

import checkpoint
import train
from configurator import cli
from helpers import (BENCH, MODEL, RUN, TINY, Exploit, assert_one_line_error, copy_checkpoint, gpt2_encoding,
                     make_text, run, run_all, write_char_dataset)
from model import GPT, GPTConfig

SEPARATOR = '---------------'


def bins_with(meta_bytes, data_dir, path):
    """A dataset folder holding data_dir's bins and the given meta.pkl."""
    os.makedirs(path)
    for name in ('train.bin', 'val.bin'):
        os.link(os.path.join(data_dir, name), os.path.join(path, name))
    with open(os.path.join(path, 'meta.pkl'), 'wb') as f:
        f.write(meta_bytes)
    return str(path)


@pytest.fixture(scope='module')
def trained(nanogpt_data, tmp_path_factory):
    """The out_dir of a tiny run of train.py on nanoGPT-format data, started in another folder with
    --out_dir=2024: a number-like value of a string key."""
    cwd = tmp_path_factory.mktemp('cwd')
    result = run('train.py', '--out_dir=2024', f'--data_dir={nanogpt_data}', *TINY, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return str(cwd / '2024')


def samples_of(stdout):
    """sample.py's printed samples, less the separator lines."""
    return [line for line in stdout.splitlines() if line != SEPARATOR]


# ----------------------------------------------------------------------------------------------
# meta.pkl runs no code, and a damaged one is named


def test_meta_pkl_that_would_run_code_is_refused_by_every_script(nanogpt_data, trained, tmp_path):
    marker = tmp_path / 'MARKER'
    system = bins_with(pickle.dumps({'vocab_size': 60, 'stoi': Exploit(os.system, f'touch {marker}')}),
                       nanogpt_data, tmp_path / 'system')
    exec_ = bins_with(pickle.dumps(Exploit(exec, f'open({str(marker)!r}, "w").close()')), nanogpt_data,
                      tmp_path / 'exec')

    def pointing_to(data_dir):
        def edit(ckpt):
            ckpt['config']['data_dir'] = data_dir
        return edit
    sample_system = copy_checkpoint(trained, tmp_path / 'run_system', pointing_to(system))
    sample_exec = copy_checkpoint(trained, tmp_path / 'run_exec', pointing_to(exec_))
    system_call = f'asks for {os.system.__module__}.system'  # posix.system on Linux and macOS
    cases = [  # (command, the folder of its meta.pkl, what it asks for)
        (('sample.py', f'--out_dir={sample_system}', '--device=cpu'), system, system_call),  # the checkpoint's data
        (('sample.py', f'--out_dir={sample_exec}', '--device=cpu'), exec_, 'asks for builtins.exec'),
        (('train.py', f'--data_dir={system}', f'--out_dir={tmp_path}/out', *TINY), system, system_call),
        (('sizing.py', f'--data_dir={system}', *MODEL), system, system_call),
        (('bench.py', f'--data_dir={system}', *TINY, *BENCH), system, system_call),
    ]
    for result, (_, data_dir, call) in zip(run_all(*[command for command, _, _ in cases]), cases):
        assert_one_line_error(result, f'{data_dir}/meta.pkl', call, 'only plain values are allowed',
                              'prepare the dataset again')
    assert not marker.exists()
    assert not os.path.exists(tmp_path / 'out')


def test_damaged_meta_pkl_is_one_line(nanogpt_data, trained, tmp_path):
    with open(os.path.join(nanogpt_data, 'meta.pkl'), 'rb') as f:
        meta_bytes = f.read()
    meta = pickle.loads(meta_bytes)
    half = bins_with(meta_bytes[:len(meta_bytes) // 2], nanogpt_data, tmp_path / 'half')
    no_vocab = bins_with(pickle.dumps({k: v for k, v in meta.items() if k != 'vocab_size'}), nanogpt_data,
                         tmp_path / 'no_vocab')
    no_tables = bins_with(pickle.dumps({'vocab_size': meta['vocab_size']}), nanogpt_data, tmp_path / 'no_tables')

    def train_on(data_dir):  # one out_dir each: the runs go side by side, and one run holds its folder
        return 'train.py', f'--data_dir={data_dir}', f'--out_dir={tmp_path}/out-{os.path.basename(data_dir)}', *TINY

    def sample_with(data_dir):
        return 'sample.py', f'--out_dir={trained}', f'--data_dir={data_dir}', '--device=cpu'
    cases = [  # (command, its damaged folder, what the error says)
        (train_on(half), half, ['is unreadable (', 'damaged or not a dataset']),
        (sample_with(half), half, ['is unreadable (', 'damaged or not a dataset']),
        (train_on(no_vocab), no_vocab, ['incomplete or wrong', 'vocab_size=None is not a positive integer']),
        (sample_with(no_tables), no_tables, ['incomplete or wrong', 'needs stoi and itos']),
    ]
    for result, (_, data_dir, words) in zip(run_all(*[command for command, _, _ in cases]), cases):
        assert_one_line_error(result, f'{data_dir}/meta.pkl', *words, 'prepare the dataset again')
    assert not list(tmp_path.glob('out-*'))


# ----------------------------------------------------------------------------------------------
# sampling


def test_nanogpt_meta_and_number_like_values(trained):
    """The run trained on nanoGPT's meta.pkl (plain pickle.dump of vocab_size, stoi, itos), into --out_dir=2024
    relative to its working folder; sample.py finds that meta.pkl through the checkpoint's config['data_dir'] and
    takes --start=1984 as the prompt '1984', not a number."""
    assert os.path.basename(trained) == '2024' and os.path.isfile(os.path.join(trained, 'ckpt.pt'))
    result = run('sample.py', f'--out_dir={trained}', '--device=cpu', '--start=1984', '--num_samples=1',
                 '--max_new_tokens=10')
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('1984') and len(samples_of(result.stdout)[0]) >= len('1984')


def test_padding_ids_of_a_gpt2_vocabulary_are_never_sampled(tmp_path):
    """A GPT-2 BPE model trained from scratch has 50304 ids, 47 of which the tokenizer cannot decode. This one
    puts almost all its probability on them: sample.py must still draw only the 50257 real ones."""
    gpt2_encoding()
    config = GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=16, vocab_size=50304, bias=True,
                       tie_embeddings=False)
    model = GPT(config)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)  # the last hidden state is all ones, whatever the input
        model.lm_head.weight.zero_()
        model.lm_head.weight[50257:] = 10.0  # the padding ids' logits 80, every real token's 0
    checkpoint.save({'model': model.state_dict(), 'model_args': checkpoint.model_args(config),
                     'config': {'data_dir': ''}}, str(tmp_path / 'ckpt.pt'))  # no data_dir: GPT-2's BPE
    result = run('sample.py', f'--out_dir={tmp_path}', '--device=cpu', '--top_k=None', '--temperature=2.0',
                 '--num_samples=4', '--max_new_tokens=20', '--start=Hello', f'--out_file={tmp_path}/out.txt')
    assert result.returncode == 0, result.stderr
    samples = (tmp_path / 'out.txt').read_text().split(f'\n{SEPARATOR}\n')[:-1]
    assert len(samples) == 4 and all(s.startswith('Hello') and len(s) > len('Hello') for s in samples)


def test_exported_char_model_samples_with_the_char_tokenizer(nanogpt_data, trained, tmp_path):
    hf_dir = tmp_path / 'hf'
    result = run('export.py', f'--out_dir={trained}', f'--to={hf_dir}')
    assert result.returncode == 0, result.stderr
    result = run('sample.py', f'--init_from={hf_dir}', f'--data_dir={nanogpt_data}', '--device=cpu',
                 '--num_samples=2', '--max_new_tokens=40', '--start=the')
    assert result.returncode == 0, result.stderr
    with open(os.path.join(nanogpt_data, 'meta.pkl'), 'rb') as f:
        vocabulary = set(pickle.load(f)['stoi'])
    text = ''.join(samples_of(result.stdout))
    assert len(text) >= 40 and set(text) <= vocabulary  # GPT-2's BPE would decode to other characters


def test_out_file_failures_leave_files_alone(trained, tmp_path):
    """An --out_file that cannot be written fails before a single token is generated (a million would take
    minutes); a failure during sampling leaves an existing --out_file as it was, and no temporary file."""
    (tmp_path / 'a_file').write_text('not a folder')
    existing = tmp_path / 'samples.txt'
    existing.write_text('earlier samples')
    million = ['--device=cpu', '--max_new_tokens=1000000']
    under_a_file, folder, failing = run_all(
        ('sample.py', f'--out_dir={trained}', *million, f'--out_file={tmp_path}/a_file/new/samples.txt'),
        ('sample.py', f'--out_dir={trained}', *million, f'--out_file={tmp_path}'),
        ('sample.py', f'--out_dir={trained}', '--device=cpu', '--start=\u00e9t\u00e9', f'--out_file={existing}'),
    )
    assert_one_line_error(under_a_file, f'out_file={tmp_path}/a_file/new/samples.txt cannot be written',
                          f'{tmp_path}/a_file is a file', 'choose another path')
    assert_one_line_error(folder, f'out_file={tmp_path} is a folder', f'--out_file={tmp_path}/samples.txt')
    assert under_a_file.stdout == '' and folder.stdout == ''
    assert_one_line_error(failing, 'characters missing from the vocabulary', "'\u00e9'")
    assert existing.read_text() == 'earlier samples' and sorted(os.listdir(tmp_path)) == ['a_file', 'samples.txt']


def test_tiny_temperature_is_greedy(trained):
    """1e-30 divides the logits into overflow; sampling must still pick the greedy token, not fail on NaN."""
    common = [f'--out_dir={trained}', '--device=cpu', '--num_samples=2', '--max_new_tokens=30']
    tiny, greedy = run_all(('sample.py', *common, '--temperature=1e-30'), ('sample.py', *common, '--temperature=0'))
    assert tiny.returncode == 0 and greedy.returncode == 0, tiny.stderr + greedy.stderr
    assert tiny.stdout == greedy.stdout


# ----------------------------------------------------------------------------------------------
# bad input through every script is one line


def test_broken_checkpoint_is_one_line_in_every_script(nanogpt_data, trained, tmp_path):
    empty = tmp_path / 'empty'
    os.makedirs(empty)
    (empty / 'ckpt.pt').write_bytes(b'')
    unknown = copy_checkpoint(trained, tmp_path / 'unknown', lambda c: c['model_args'].update(flux=3))
    no_args = copy_checkpoint(trained, tmp_path / 'no_args', lambda c: c.pop('model_args'))
    edited = copy_checkpoint(trained, tmp_path / 'edited', lambda c: c['model_args'].update(n_layer=2))

    def sample(run_dir):
        return 'sample.py', f'--out_dir={run_dir}', '--device=cpu'

    def export(run_dir):
        return 'export.py', f'--out_dir={run_dir}', f'--to={tmp_path}/hf'

    def sizing(run_dir):
        return 'sizing.py', f'--out_dir={run_dir}', '--init_from=resume', f'--data_dir={nanogpt_data}'

    def resume(run_dir):
        return 'train.py', f'--out_dir={run_dir}', '--init_from=resume', f'--data_dir={nanogpt_data}', *RUN
    cases = [
        *[(command(empty), [f'{empty}/ckpt.pt is unreadable or corrupt', 'restore it'])
          for command in (sample, export, sizing, resume)],
        (resume(unknown), [f'{unknown}/ckpt.pt has model_args this GPT does not know', "'flux'"]),
        (export(no_args), [f'{no_args}/ckpt.pt has no model and model_args']),
        (sample(edited), [f'weights in {edited}/ckpt.pt do not match its architecture (missing: transformer.h.1',
                          'edited']),
    ]
    for result, (_, words) in zip(run_all(*[command for command, _ in cases]), cases):
        assert_one_line_error(result, *words)
    assert not os.path.exists(tmp_path / 'hf')


def test_bad_bins_are_one_line(tmp_path):
    beyond = write_char_dataset(tmp_path / 'beyond', make_text(5_000), nanogpt=True)
    with open(os.path.join(beyond, 'meta.pkl'), 'rb') as f:
        vocab_size = pickle.load(f)['vocab_size']
    for name in ('train.bin', 'val.bin'):  # the bins of a larger vocabulary beside this meta.pkl
        path = os.path.join(beyond, name)
        (np.fromfile(path, dtype=np.uint16) + vocab_size).tofile(path)
    empty = write_char_dataset(tmp_path / 'empty', make_text(5_000), nanogpt=True)
    open(os.path.join(empty, 'train.bin'), 'wb').close()
    short = write_char_dataset(tmp_path / 'short', make_text(5_000), nanogpt=True)
    np.zeros(10, dtype=np.uint16).tofile(os.path.join(short, 'val.bin'))
    cases = {
        beyond: ['.bin in', 'holds token id', f'has only {vocab_size} (ids 0..{vocab_size - 1})',
                 'prepare the dataset again'],
        empty: ['train.bin in', 'has 0 tokens, too few for block_size=16: prepare it again'],
        short: ['val.bin in', 'has 10 tokens, too few for block_size=16: use a smaller --block_size (at most 9)'],
    }
    results = run_all(*[('train.py', f'--data_dir={data_dir}', f'--out_dir={data_dir}/out', *TINY) for data_dir in cases])
    for result, words in zip(results, cases.values()):
        assert_one_line_error(result, *words)
        assert 'at most -' not in result.stderr
    assert not any(os.path.exists(os.path.join(data_dir, 'out', 'ckpt.pt')) for data_dir in cases)


def test_bad_settings_are_one_line(nanogpt_data, tmp_path):
    def train_with(*extra):
        return ('train.py', f'--data_dir={nanogpt_data}', f'--out_dir={tmp_path}/out', *TINY, *extra)
    cases = [
        (train_with('--seed=-1'), ['seed=-1 must be 0 or more']),
        (train_with('--grad_clip=-1'), ['grad_clip=-1.0 must be 0 or more', '0 disables clipping']),
        (train_with('--backend=foo'), ["backend='foo' is not one of auto, nccl, gloo"]),
        (('bench.py', f'--data_dir={nanogpt_data}', *TINY, *BENCH, '--seed=-1'), ['seed=-1 must be 0 or more']),
        (('prepare.py', f'{tmp_path}/no_such.txt', f'--out_dir={tmp_path}/data'),
         [f'input {tmp_path}/no_such.txt does not exist', 'check the path']),
        (('data/shakespeare_char/prepare.py', f'--input={tmp_path}/no_such.txt'),
         [f'input {tmp_path}/no_such.txt does not exist', 'check the path']),
        (('export.py', f'--out_dir={tmp_path}'), ['say where to write', '--to=FOLDER']),
    ]
    for result, (_, words) in zip(run_all(*[command for command, _ in cases]), cases):
        assert_one_line_error(result, *words)
    assert os.listdir(tmp_path) == []


def test_wandb_that_cannot_start_is_one_line(nanogpt_data, tmp_path):
    """Online wandb without an account fails at once (before the first step), not after a timeout."""
    pytest.importorskip('wandb')
    env = {'WANDB_MODE': 'online', 'WANDB_API_KEY': '', 'WANDB_BASE_URL': 'http://127.0.0.1:9',
           'WANDB_DIR': str(tmp_path), 'WANDB_CONFIG_DIR': str(tmp_path), 'WANDB_SILENT': 'true'}
    result = run('train.py', f'--data_dir={nanogpt_data}', f'--out_dir={tmp_path}/out', *TINY, '--wandb_log=True',
                 env=env, timeout=30)
    assert_one_line_error(result, 'wandb_log=True, but wandb could not start', 'wandb login', 'WANDB_MODE=offline')
    assert 'iter 1:' not in result.stdout


# ----------------------------------------------------------------------------------------------
# failures that no command line can cause, through configurator.cli in-process


def cli_error(capsys, main):
    with pytest.raises(SystemExit) as e:
        cli(main)
    err = capsys.readouterr().err
    assert e.value.code == 1 and len(err.strip().splitlines()) == 1 and err.startswith('error: '), err
    return err


def test_out_of_memory_points_to_sizing(nanogpt_data, tmp_path, monkeypatch, capsys):
    def step(*args, **kwargs):
        raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')
    monkeypatch.setattr(train, 'train_step', step)
    err = cli_error(capsys, lambda: train.main([f'--data_dir={nanogpt_data}', f'--out_dir={tmp_path}', *TINY]))
    assert 'out of memory on cpu' in err and '--batch_size' in err and 'sizing.py' in err


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(nanogpt_data, tmp_path, monkeypatch, capsys):
    argv = [f'--data_dir={nanogpt_data}', f'--out_dir={tmp_path}', *TINY]
    train.main(argv)
    path = tmp_path / 'ckpt.pt'
    before = path.read_bytes()

    def half_save(obj, f):
        with open(f, 'wb') as out:
            out.write(before[:len(before) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, 'save', half_save)
    err = cli_error(capsys, lambda: train.main(argv + ['--init_from=resume', '--max_iters=8']))
    assert f'could not save {path}' in err and 'No space left on device' in err and '--init_from=resume' in err
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ['ckpt.pt', 'loss.png', 'metrics.jsonl']
