"""train.py builds its model exactly once and reads its weights once, whatever it starts from (scratch, a
checkpoint to resume, a Hugging Face GPT-2 folder) and however it runs (one process, FSDP over 2 processes):
checkpoint.init_model's promise of "open the source, decide the architecture, build once, load once"."""
import json
import os
import tempfile

import pytest
import torch

from helpers import ROOT, run, write_char_dataset

# train.main in a fresh process, with GPT's constructor and the two weight readers counted
COUNTING_TRAIN = f'''
import json, os, sys
sys.path.insert(0, {ROOT!r})
import checkpoint, hf, model, train
counts = {{'builds': 0, 'checkpoint_reads': 0, 'pretrained_reads': 0}}

def counted(function, key):
    def wrapper(*args, **kwargs):
        counts[key] += 1
        return function(*args, **kwargs)
    return wrapper

model.GPT.__init__ = counted(model.GPT.__init__, 'builds')
checkpoint.load = counted(checkpoint.load, 'checkpoint_reads')
hf.gpt2_state_dict = counted(hf.gpt2_state_dict, 'pretrained_reads')
train.main(sys.argv[1:])
with open(os.path.join(os.environ['COUNTS'], 'rank' + os.environ.get('RANK', '0')), 'w') as f:
    json.dump(counts, f)
'''


def counted_run(tmp_path, data, out_dir, *extra, processes=1):
    """Per rank, the counts of one train.py run."""
    counts_dir = tempfile.mkdtemp(dir=tmp_path)
    script = tmp_path / 'counting_train.py'
    script.write_text(COUNTING_TRAIN)
    args = ['--dataset=chars', f'--data_dir={data}', f'--out_dir={out_dir}', '--device=cpu', '--dtype=float32',
            '--compile=False', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=2',
            '--gradient_accumulation_steps=2', '--eval_iters=1', '--eval_interval=2', '--warmup_iters=0', *extra]
    result = run(str(script), *args, processes=processes if processes > 1 else None, env={'COUNTS': counts_dir})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    counts = []
    for rank in range(processes):
        with open(os.path.join(counts_dir, f'rank{rank}')) as f:
            counts.append(json.load(f))
    return counts


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    """A char dataset, a finished run of it in each format (ckpt.pt, FSDP's ckpt.dcp), a Hugging Face folder."""
    from hf import export_hf
    from model import GPT, GPTConfig
    tmp = tmp_path_factory.mktemp('sources')
    data = write_char_dataset(tmp / 'data')
    torch.manual_seed(0)
    export_hf(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=64, bias=True)),
              str(tmp / 'hf'))
    return tmp, data


@pytest.mark.parametrize('processes', [1, 2], ids=['one_process', 'fsdp'])
def test_each_source_builds_the_model_once_and_reads_its_weights_once(sources, tmp_path, processes):
    tmp, data = sources
    fsdp = ['--parallel=fsdp'] if processes > 1 else []
    run = tmp_path / 'run'
    for rank_counts in counted_run(tmp_path, data, run, '--max_iters=2', *fsdp, processes=processes):
        assert rank_counts == {'builds': 1, 'checkpoint_reads': 0, 'pretrained_reads': 0}  # scratch
    resumed = counted_run(tmp_path, data, run, '--init_from=resume', '--max_iters=4', *fsdp, processes=processes)
    for rank_counts in resumed:
        assert rank_counts == {'builds': 1, 'checkpoint_reads': 1, 'pretrained_reads': 0}  # each its shards
    assert sorted(os.listdir(run))[0] == ('ckpt.dcp' if processes > 1 else 'ckpt.pt')
    pretrained = counted_run(tmp_path, data, tmp_path / 'finetune', f'--init_from={tmp / "hf"}', '--max_iters=2',
                             *fsdp, processes=processes)
    # rank 0 reads the folder and sends each process its shards: the weights are read once in all
    assert pretrained[0] == {'builds': 1, 'checkpoint_reads': 0, 'pretrained_reads': 1}
    for rank_counts in pretrained[1:]:
        assert rank_counts == {'builds': 1, 'checkpoint_reads': 0, 'pretrained_reads': 0}
