"""The README's two CPU configs, run as a learner runs them: train.py in a fresh process on Tiny Shakespeare
(prepared from input.txt by train.py itself), a few iterations each, and the checkpoint holds the model the
README promises: the modern variant for the quick start, nanoGPT's exact GPT-2 model for the other."""
import os
import shutil

import pytest
import torch

from helpers import read_metrics, run, shakespeare

NANOGPT_MODEL_ARGS = {'n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size', 'dropout'}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp('data') / 'shakespeare_char'
    os.makedirs(path)
    shutil.copy(shakespeare(), path / 'input.txt')  # offline: the file the download would fetch
    return path


@pytest.mark.parametrize('config, model, optimizer', [
    ('train_shakespeare_char_cpu.py', {'n_layer': 2, 'norm': 'rmsnorm', 'pos_emb': 'rope', 'mlp': 'swiglu'}, 'muon'),
    ('train_shakespeare_char_gpt2_cpu.py', {'n_layer': 4, 'n_embd': 128, 'bias': True}, 'adamw'),
])
def test_cpu_config_trains(data_dir, tmp_path, config, model, optimizer):
    out_dir = tmp_path / 'out'
    result = run('train.py', os.path.join('config', config), f'--data_dir={data_dir}', f'--out_dir={out_dir}',
                 '--max_iters=30', '--eval_interval=30', '--eval_iters=5')
    assert result.returncode == 0, result.stderr
    evals = [r for r in read_metrics(out_dir) if 'val_loss' in r]
    assert [r['iter'] for r in evals] == [0, 30] and evals[1]['val_loss'] < evals[0]['val_loss'] - 0.5
    ckpt = torch.load(out_dir / 'ckpt.pt', map_location='cpu', weights_only=True)  # as nanoGPT reads it
    assert ckpt['config']['optimizer'] == optimizer and ckpt['model_args']['vocab_size'] == 65
    assert {k: ckpt['model_args'][k] for k in model} == model
    if optimizer == 'adamw':  # GPT-2's architecture: exactly the keys nanoGPT's sample.py reads
        assert set(ckpt['model_args']) == NANOGPT_MODEL_ARGS
