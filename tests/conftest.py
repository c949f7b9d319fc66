"""Tests run offline on CPU: the shared offline assets (../shared) stand in for downloads when they exist;
a test that needs one that is missing (a user's machine has no ../shared) is skipped with the reason.
The fixtures that several test files use are here; the functions they share are in helpers.py."""
import os
import sys

import pytest

from helpers import OFFLINE, ROOT, make_text, run, write_char_dataset

sys.path.insert(0, ROOT)
for name, value in OFFLINE.items():
    os.environ.setdefault(name, value)


@pytest.fixture(scope='module')
def char_data(tmp_path_factory):
    """A character-level dataset as prepare.py writes it (read only: tests copy it to change it)."""
    return write_char_dataset(tmp_path_factory.mktemp('char'))


@pytest.fixture(scope='module')
def nanogpt_data(tmp_path_factory):
    """A character-level dataset in nanoGPT's format (meta.pkl without dtype or token counts), with digits, so
    that a prompt such as 1984 can be encoded (read only)."""
    return write_char_dataset(tmp_path_factory.mktemp('nanogpt_char'), make_text(50_000) + '\nIn 1984, and 2024.\n',
                              nanogpt=True)


@pytest.fixture(scope='module')
def model_files(char_data, tmp_path_factory):
    """A run folder with ckpt.pt, one with ckpt.dcp (the sharded format) and a Hugging Face folder, of one tiny model
    trained on nothing, written here in-process (no training: the readers are what is tested)."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    import checkpoint
    import dataset
    from model import GPT, GPTConfig
    root = tmp_path_factory.mktemp('models')
    meta = dataset.load_meta(char_data)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, bias=False, vocab_size=meta['vocab_size'])
    model = GPT(config)
    state = {'model_args': checkpoint.model_args(config), 'iter_num': 4, 'best_val_loss': 3.0,
             'config': {'data_dir': char_data, 'optimizer': 'adamw', 'tokenizer': dataset.fingerprint(meta)},
             'rng': checkpoint.all_rng_states(1)}
    checkpoint.save({'model': model.state_dict(), **state}, str(root / 'pt' / 'ckpt.pt'))
    shards = root / 'dcp' / 'ckpt.dcp'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        dcp.save({'model': model.state_dict(), 'optimizer': {}}, checkpoint_id=str(shards / 'iter_0000004'),
                 no_dist=True)
    torch.save(dict(state, optimizer_groups=[]), shards / 'iter_0000004' / 'train_state.pt')
    (shards / 'latest').write_text('iter_0000004\n')
    hf_dir = root / 'hf'
    result = run('export.py', f"--out_dir={root / 'pt'}", f'--to={hf_dir}')
    assert result.returncode == 0, result.stderr
    return {'pt': str(root / 'pt'), 'dcp': str(root / 'dcp'), 'hf': str(hf_dir)}
