import os

import pytest
import torch

import checkpoint
import dataset
import machine
import sample
import tokenizer as tokenizers
import train
from configurator import configure
from helpers import assert_one_line_error, gpt2_encoding, make_text, run, small_run, write_char_dataset
from model import GPT, GPTConfig
from tokenizer import Tokenizer


@pytest.fixture(scope='module')
def trained(nanogpt_data, tmp_path_factory):
    """A checkpoint that a small training run wrote."""
    out_dir = tmp_path_factory.mktemp('run')
    train.main(small_run(nanogpt_data, out_dir, '--max_iters=20', '--eval_interval=20'))
    return str(out_dir)


CPU = machine.Machine('cpu', 'float32', compile=False)


def run_sample(out_dir, *extra, write=None):
    cfg = configure(sample.DEFAULTS, [f'--out_dir={out_dir}', '--num_samples=2', '--max_new_tokens=30', *extra],
                    sample.TYPES_OF_NONE)
    sample.check_options(cfg)
    model, source = checkpoint.load_model(cfg['init_from'], cfg['out_dir'])
    tokenizer = tokenizers.for_model(model, source, cfg['data_dir'])
    torch.manual_seed(cfg['seed'])
    chunks = []
    samples = sample.generate_samples(model.eval(), tokenizer, CPU, cfg, write=write or chunks.append)
    return samples, chunks


def test_samples_from_a_trained_checkpoint(trained):
    samples, _ = run_sample(trained, '--start=my lord')
    assert len(samples) == 2 and all(s.startswith('my lord') and len(s) == 7 + 30 for s in samples)
    assert samples[0] != samples[1]  # two different draws in one batch


def test_seed_makes_it_deterministic(trained):
    assert run_sample(trained, '--seed=7')[0] == run_sample(trained, '--seed=7')[0]
    assert run_sample(trained, '--seed=7')[0] != run_sample(trained, '--seed=8')[0]


def test_greedy_equals_recomputation(trained):
    samples, _ = run_sample(trained, '--temperature=0', '--num_samples=1', '--start=king', '--max_new_tokens=20')
    ckpt = checkpoint.load(os.path.join(trained, 'ckpt.pt'))
    model = GPT(GPTConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['model'])
    model.eval()
    tokenizer = Tokenizer(dataset.load_meta(ckpt['config']['data_dir']))
    idx = torch.tensor([tokenizer.encode('king')])
    for _ in range(20):
        idx = torch.cat((idx, model(idx)[0][:, -1].argmax(-1, keepdim=True)), dim=1)
    assert samples[0] == tokenizer.decode(idx[0].tolist())


def test_streaming_writes_the_first_sample_token_by_token(trained):
    samples, chunks = run_sample(trained, '--start=a')
    separator = '\n' + sample.SEPARATOR + '\n'
    assert len(chunks) >= 30  # the prompt, then one write per token, then the rest
    assert ''.join(chunks) == ''.join(s + separator for s in samples)


def test_streaming_never_splits_a_multibyte_character(tmp_path):
    """GPT-2 BPE tokens can end inside a UTF-8 character: the stream holds such bytes back."""
    gpt2_encoding()  # or skip
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=50257)).eval()
    tokenizer = Tokenizer(None)
    ids = tokenizer.encode('héllo wörld 東京 ')
    chunks = []
    streamer = sample.Streamer(tokenizer, ids[:1], chunks.append)
    for token in ids[1:]:
        streamer(torch.tensor([[token]]))
    assert '\ufffd' not in ''.join(chunks)
    assert tokenizer.decode(ids[:1]) + ''.join(chunks) == tokenizer.decode(ids).rstrip('\ufffd')
    cfg = dict(sample.DEFAULTS, start='東京', num_samples=1, max_new_tokens=20)
    out = []
    samples = sample.generate_samples(model, tokenizer, CPU, cfg, write=out.append)
    assert ''.join(out) == samples[0] + '\n' + sample.SEPARATOR + '\n'


def test_nanogpt_checkpoint_layout(tmp_path):
    """A checkpoint as nanoGPT writes it: compiled names, mask buffers, no modern fields, meta without dtype."""
    meta = dataset.load_meta(write_char_dataset(tmp_path / 'data' / 'shakespeare_char', make_text(1_000), nanogpt=True))
    model_args = dict(n_layer=2, n_head=2, n_embd=16, block_size=32, bias=False, vocab_size=meta['vocab_size'],
                      dropout=0.0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**model_args)).eval()
    state = {'_orig_mod.' + k: v for k, v in model.state_dict().items()}
    for i in range(2):
        state[f'_orig_mod.transformer.h.{i}.attn.bias'] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
    out_dir = tmp_path / 'out'
    os.makedirs(out_dir)
    torch.save({'model': state, 'optimizer': {}, 'model_args': model_args, 'iter_num': 100, 'best_val_loss': 1.5,
                'config': {'dataset': 'shakespeare_char', 'batch_size': 12}}, out_dir / 'ckpt.pt')
    cwd = os.getcwd()
    os.chdir(tmp_path)  # nanoGPT's checkpoints name the dataset; its meta.pkl is found under ./data
    try:
        samples, _ = run_sample(out_dir, '--temperature=0', '--num_samples=1', '--start=abc')
    finally:
        os.chdir(cwd)
    expected = model.generate(torch.tensor([[meta['stoi'][c] for c in 'abc']]), 30, temperature=0)
    assert samples[0] == ''.join(meta['itos'][i] for i in expected[0].tolist())


def test_prompt_from_file_and_out_file(trained, tmp_path):
    prompt = tmp_path / 'prompt.txt'
    prompt.write_text('my lord\n')
    out_file = tmp_path / 'samples.txt'
    result = run('sample.py', f'--out_dir={trained}', f'--start=FILE:{prompt}', '--num_samples=2',
                 '--max_new_tokens=10', '--device=cpu', f'--out_file={out_file}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(sample.SEPARATOR) == 2 and result.stdout.startswith('my lord\n')
    assert out_file.read_text() == result.stdout


@pytest.mark.parametrize('extra, words', [
    (['--temperature=-1'], ['temperature=-1', '>= 0']),
    (['--top_k=0'], ['top_k=0', 'at least 1']),
    (['--top_p=0'], ['top_p=0', '(0, 1]']),
    (['--top_p=1.5'], ['top_p=1.5']),
    (['--max_new_tokens=-5'], ['max_new_tokens=-5']),
    (['--num_samples=0'], ['num_samples=0']),
    (['--start=' + 'a' * 40], ['40 tokens long', 'context of 32']),
    (['--start=ünïcode'], ['missing from the vocabulary', "'ïü'"]),
    (['--start='], ['the prompt is empty']),
    (['--tempreature=1'], ["unknown config key 'tempreature'", 'temperature']),
])
def test_bad_input(trained, extra, words):
    with pytest.raises(ValueError) as e:
        run_sample(trained, *extra)
    for word in words:
        assert word in str(e.value)


def test_missing_checkpoint_says_where_and_how(tmp_path):
    result = run('sample.py', f'--out_dir={tmp_path}/none', '--device=cpu')
    assert_one_line_error(result)
    assert result.stderr.strip() == (f'error: no checkpoint at {tmp_path}/none/ckpt.pt (nor the shards of an FSDP '
                                     'run, ckpt.dcp): train one with `python train.py ...`, or check --out_dir')
