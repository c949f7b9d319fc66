"""GPT.from_pretrained and export.py against Hugging Face transformers (a test-only dependency), on tiny
random models saved inside each test: same logits, same greedy tokens, same tensors on a round trip."""
import dataclasses
import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import checkpoint
import export
import hf as hf_io
import machine
import training
from configurator import cli, configure
from model import GPT, GPTConfig

transformers = pytest.importorskip('transformers', reason='transformers is the reference for these tests')

GPT2_CONFIGS = [
    dict(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=50257),  # OpenAI's vocabulary
    dict(n_layer=2, n_head=4, n_embd=64, n_positions=16, vocab_size=97),
    dict(n_layer=1, n_head=4, n_embd=32, n_positions=24, vocab_size=61, n_inner=48, tie_word_embeddings=False),
]
CPU = machine.Machine('cpu', 'float32', compile=False)
LLAMA_STYLE = dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, d_ff=96, block_size=32, vocab_size=97,
                   norm='rmsnorm', pos_emb='rope', mlp='swiglu', rope_theta=500.0, bias=False)


def load_gpt2(name_or_path):
    return checkpoint.load_model(name_or_path)[0]


def randomize(model, seed=0):
    """Perturb every parameter: at init biases are 0 and norm gains 1, so a loader that dropped or swapped
    them would still match."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model.eval()


def save_hf_gpt2(folder, **config):
    """A random transformers GPT-2 saved with save_pretrained (config.json + model.safetensors)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(bos_token_id=None, eos_token_id=None, **config)  # no token ends generation
    hf = randomize(transformers.GPT2LMHeadModel(config))
    hf.save_pretrained(folder)
    return hf


def all_logits(model, idx):
    logits, _ = model.eval()(idx, targets=idx)  # with targets, every position's logits come back
    return logits


def full_context(vocab_size, block_size, seed=1):
    return torch.randint(0, vocab_size, (2, block_size), generator=torch.Generator().manual_seed(seed))


def assert_same_logits(ours, hf, vocab_size, block_size):
    idx = full_context(vocab_size, block_size)
    with torch.no_grad():
        torch.testing.assert_close(all_logits(ours, idx), hf(idx).logits, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# loading


@pytest.mark.parametrize('config', GPT2_CONFIGS)
def test_logits_equal_transformers_over_the_whole_context(tmp_path, config):
    hf = save_hf_gpt2(tmp_path, **config)
    model = load_gpt2(str(tmp_path))
    c = model.config
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (
        config['n_layer'], config['n_head'], config['n_embd'], config['n_positions'], config['vocab_size'])
    assert c.tie_embeddings == config.get('tie_word_embeddings', True)
    assert_same_logits(model, hf, config['vocab_size'], config['n_positions'])


@pytest.mark.parametrize('config', [GPT2_CONFIGS[0], GPT2_CONFIGS[2]])
def test_greedy_generation_equals_transformers(tmp_path, config):
    hf = save_hf_gpt2(tmp_path, **config)
    model = load_gpt2(str(tmp_path))
    prompt = full_context(config['vocab_size'], 4)
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False)
    assert torch.equal(model.generate(prompt, 20, temperature=0), expected)


def test_pytorch_model_bin_in_openai_layout(tmp_path):
    """OpenAI's files: GPT2Model names (no 'transformer.' prefix) and the causal-mask buffers, in a .bin."""
    config = GPT2_CONFIGS[1]
    hf = save_hf_gpt2(tmp_path / 'src', **config)
    folder = tmp_path / 'bin'
    hf.config.save_pretrained(folder)
    state_dict = dict(hf.transformer.state_dict())
    for i in range(config['n_layer']):
        state_dict[f'h.{i}.attn.bias'] = torch.ones(1, 1, 16, 16).tril()
        state_dict[f'h.{i}.attn.masked_bias'] = torch.tensor(-1e4)
    torch.save(state_dict, folder / 'pytorch_model.bin')
    assert_same_logits(load_gpt2(str(folder)), hf, config['vocab_size'], config['n_positions'])


def test_sharded_safetensors(tmp_path):
    config = GPT2_CONFIGS[2]
    hf = save_hf_gpt2(tmp_path / 'src', **config)
    folder = tmp_path / 'sharded'
    folder.mkdir()
    shutil.copy(tmp_path / 'src' / 'config.json', folder)
    tensors = load_file(tmp_path / 'src' / 'model.safetensors')
    names = sorted(tensors)
    shards = {'model-00001-of-00002.safetensors': names[::2], 'model-00002-of-00002.safetensors': names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, folder / file, metadata={'format': 'pt'})
    index = {'metadata': {}, 'weight_map': {k: file for file, keys in shards.items() for k in keys}}
    (folder / 'model.safetensors.index.json').write_text(json.dumps(index))
    assert_same_logits(load_gpt2(str(folder)), hf, config['vocab_size'], config['n_positions'])


def test_missing_unexpected_and_misshaped_tensors_are_all_listed(tmp_path):
    save_hf_gpt2(tmp_path, **GPT2_CONFIGS[0])
    tensors = load_file(tmp_path / 'model.safetensors')
    del tensors['transformer.h.1.mlp.c_fc.bias']
    tensors['transformer.h.0.attn.q_attn.weight'] = torch.zeros(32, 32)
    tensors['transformer.wpe.weight'] = tensors['transformer.wpe.weight'][:8].clone()
    save_file(tensors, tmp_path / 'model.safetensors')
    with pytest.raises(ValueError) as e:
        load_gpt2(str(tmp_path))
    message = str(e.value)
    assert 'missing: transformer.h.1.mlp.c_fc.bias' in message
    assert 'unexpected: transformer.h.0.attn.q_attn.weight' in message
    assert 'wrongly shaped: transformer.wpe.weight (8, 32) (expected (32, 32))' in message
    assert '\n' not in message


@pytest.mark.parametrize('field, value', [
    ('activation_function', 'relu'), ('scale_attn_by_inverse_layer_idx', True),
    ('reorder_and_upcast_attn', True), ('model_type', 'llama'),
])
def test_configs_this_gpt_cannot_reproduce_are_refused(tmp_path, field, value):
    save_hf_gpt2(tmp_path, **GPT2_CONFIGS[1])
    config = json.loads((tmp_path / 'config.json').read_text())
    config[field] = value
    (tmp_path / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f'cannot reproduce exactly: {field}={value!r}'):
        load_gpt2(str(tmp_path))


def test_a_pretrained_model_may_change_dropout_only(tmp_path):
    """The architecture is the checkpoint's: a run may set dropout and crop block_size, nothing else."""
    save_hf_gpt2(tmp_path, **GPT2_CONFIGS[1])
    def init_model(*args):
        cfg = configure(training.DEFAULTS, [f'--init_from={tmp_path}', *args], training.TYPES_OF_NONE)
        return checkpoint.init_model(cfg, None, CPU)[0]
    with pytest.raises(ValueError, match=f"n_layer=4 was asked for, but {tmp_path} has n_layer="):
        init_model('--dropout=0.1', '--n_layer=4', '--block_size=8')
    model = init_model('--dropout=0.1', '--block_size=8')
    assert (model.config.block_size, model.config.dropout) == (8, 0.1) and model.transformer.h[0].attn.dropout == 0.1


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline (conftest sets HF_HUB_OFFLINE=1; this holds even without it)."""
    from huggingface_hub import constants
    cache = tmp_path / 'hf_cache'
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    return cache


def test_hub_name_offline_fails_with_one_line_saying_what_to_do(hf_cache):
    with pytest.raises(OSError) as e:
        load_gpt2('gpt2-xl')
    message = str(e.value)
    assert message.startswith('could not download gpt2-xl (no network or HF_HUB_OFFLINE=1')
    assert 'pass its path' in message and 'hf download openai-community/gpt2-xl' in message
    assert '\n' not in message


@pytest.mark.parametrize('repo', ['openai-community--gpt2', 'gpt2'])  # today's repo id, and the old one's cache
def test_hub_name_loads_from_the_hf_cache(tmp_path, hf_cache, repo, monkeypatch):
    config = GPT2_CONFIGS[1]
    hf = save_hf_gpt2(tmp_path / 'src', **config)
    # a tiny model stands in for GPT-2 in the cache: its architecture replaces the preset's (config/model_gpt2.py)
    architecture = hf_io.gpt2_args(str(tmp_path / 'src'))
    monkeypatch.setattr(hf_io, 'gpt2_args', lambda name: architecture)
    commit = 'a' * 40
    snapshot = hf_cache / f'models--{repo}' / 'snapshots' / commit
    snapshot.mkdir(parents=True)
    for name in ('config.json', 'model.safetensors'):
        shutil.copy(tmp_path / 'src' / name, snapshot)
    (hf_cache / f'models--{repo}' / 'refs').mkdir()
    (hf_cache / f'models--{repo}' / 'refs' / 'main').write_text(commit)
    assert_same_logits(load_gpt2('gpt2'), hf, config['vocab_size'], config['n_positions'])


def test_neither_a_name_nor_a_gpt2_folder(tmp_path):
    with pytest.raises(ValueError, match="init_from='gpt3' is not 'scratch', 'resume', 'auto', one of gpt2"):
        load_gpt2('gpt3')
    with pytest.raises(ValueError, match='is not a Hugging Face model folder'):
        load_gpt2(str(tmp_path))


# ----------------------------------------------------------------------------------------------
# export


@pytest.mark.parametrize('args', [dict(), dict(bias=False), dict(tie_embeddings=False, d_ff=48)])
def test_export_gpt2_loads_in_transformers_with_the_same_logits(tmp_path, args):
    model = randomize(GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=97, **args)))
    assert hf_io.export_hf(model, tmp_path) == 'GPT2LMHeadModel'
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert_same_logits(model, hf, 97, 16)


@pytest.mark.parametrize('args', [dict(), dict(tie_embeddings=False), dict(tie_embeddings=False, bias=True)])
def test_export_llama_style_loads_in_transformers_with_the_same_logits(tmp_path, args):
    model = randomize(GPT(GPTConfig(**{**LLAMA_STYLE, **args})))
    assert hf_io.export_hf(model, tmp_path) == 'LlamaForCausalLM'
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.num_key_value_heads == 2
    assert_same_logits(model, hf, 97, 32)


@pytest.mark.parametrize('tied', [True, False])
def test_round_trip_hf_to_project_to_hf_keeps_every_tensor(tmp_path, tied):
    save_hf_gpt2(tmp_path / 'src', **{**GPT2_CONFIGS[1], 'tie_word_embeddings': tied})
    hf_io.export_hf(load_gpt2(str(tmp_path / 'src')), tmp_path / 'out')
    before, after = load_file(tmp_path / 'src' / 'model.safetensors'), load_file(tmp_path / 'out' / 'model.safetensors')
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    config_before, config_after = (json.loads((tmp_path / d / 'config.json').read_text()) for d in ('src', 'out'))
    for field in ('n_layer', 'n_head', 'n_embd', 'n_positions', 'vocab_size', 'tie_word_embeddings'):
        assert config_before[field] == config_after[field]


@pytest.mark.parametrize('args, named', [
    (dict(pos_emb='rope'), "nearest to GPT-2 but has pos_emb='rope'"),
    (dict(norm='rmsnorm'), "nearest to GPT-2 but has norm='rmsnorm'"),
    (dict(n_kv_head=2), 'nearest to GPT-2 but has n_kv_head=2'),
    (dict(norm='rmsnorm', pos_emb='rope'), "nearest to Llama but has mlp='gelu'"),
])
def test_export_refuses_mixes_no_hf_architecture_computes(tmp_path, args, named):
    model = GPT(GPTConfig(n_layer=1, n_head=4, n_embd=32, block_size=8, vocab_size=11, **args))
    with pytest.raises(ValueError, match='cannot export this model') as e:
        hf_io.export_hf(model, tmp_path / 'hf')
    assert named in str(e.value)
    assert not (tmp_path / 'hf').exists()


def test_export_replaces_a_model_only_with_force_and_keeps_other_files(tmp_path):
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    hf_io.export_hf(model, tmp_path)
    (tmp_path / 'tokenizer.json').write_text('{}')
    with pytest.raises(ValueError, match='already holds config.json and model.safetensors: pass --force=True'):
        hf_io.export_hf(model, tmp_path)
    hf_io.export_hf(model, tmp_path, force=True)
    assert (tmp_path / 'tokenizer.json').read_text() == '{}'


def test_export_command_from_a_checkpoint(tmp_path, monkeypatch, capsys):
    model = randomize(GPT(GPTConfig(**LLAMA_STYLE)))
    checkpoint.save({'model': model.state_dict(), 'model_args': dataclasses.asdict(model.config)},
                           str(tmp_path / 'ckpt.pt'))
    monkeypatch.setattr(sys, 'argv', ['export.py', f'--out_dir={tmp_path}', f'--to={tmp_path / "hf"}'])
    cli(export.main)
    assert 'LlamaForCausalLM' in capsys.readouterr().out
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'hf').eval()
    assert_same_logits(model, hf, 97, 32)
    capsys.readouterr()  # transformers' progress bars

    monkeypatch.setattr(sys, 'argv', ['export.py', f'--out_dir={tmp_path}'])
    with pytest.raises(SystemExit) as e:
        cli(export.main)
    assert e.value.code == 1
    assert capsys.readouterr().err.startswith('error: say where to write the Hugging Face folder: --to=FOLDER')
