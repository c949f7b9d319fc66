"""Llama, Qwen2 and Qwen3 folders (issue 22) against Hugging Face transformers: tiny random models built and saved
in the tests with save_pretrained; our logits, cached generation and export equal transformers', and every script
reads such a folder. Published parameter counts checked against transformers on the meta device."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import checkpoint
import hf as hf_io
from configurator import read_config_file
from helpers import ROOT, assert_one_line_error, gpt2_encoding, read_metrics, run, run_all, write_char_dataset
from model import GPT, GPTConfig

transformers = pytest.importorskip('transformers', reason='transformers is the reference for these tests')

SMALL = dict(vocab_size=71, hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=24, bos_token_id=None, eos_token_id=None)
# transformers 4's keys, which 5 turns into its rope_parameters
LLAMA3_ROPE = dict(rope_theta=500000.0, rope_scaling=dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0,
                                                          high_freq_factor=4.0, original_max_position_embeddings=8))
FAMILIES = {  # name: (transformers config class, model class, extra config)
    'llama': ('LlamaConfig', 'LlamaForCausalLM', dict(rms_norm_eps=1e-5)),
    'llama3_tied': ('LlamaConfig', 'LlamaForCausalLM', dict(**LLAMA3_ROPE, tie_word_embeddings=True)),
    'llama_bias': ('LlamaConfig', 'LlamaForCausalLM', dict(attention_bias=True, mlp_bias=True, num_key_value_heads=4)),
    'qwen2_tied': ('Qwen2Config', 'Qwen2ForCausalLM', dict(tie_word_embeddings=True)),
    'qwen3': ('Qwen3Config', 'Qwen3ForCausalLM', dict(head_dim=16)),  # head size 16, not 32 / 4
}


def save_family(folder, family, dtype=torch.float32, **extra):
    """A random transformers model of the family, saved with save_pretrained (safetensors); its weights drawn
    wider than at init and norm gains perturbed, so that a swapped or dropped tensor shows."""
    config_class, model_class, options = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**dict(SMALL, **options, **extra))
    model = getattr(transformers, model_class)(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model = model.to(dtype).eval()
    model.save_pretrained(folder, max_shard_size='20KB' if 'shard' in str(folder) else '5GB')
    return model


def context(n=2, length=SMALL['max_position_embeddings'], seed=1):
    return torch.randint(0, SMALL['vocab_size'], (n, length), generator=torch.Generator().manual_seed(seed))


def all_logits(model, idx):
    with torch.no_grad():
        return model.eval()(idx, targets=idx)[0]  # with targets, every position's logits


@pytest.mark.parametrize('family', FAMILIES)
def test_logits_and_cached_generation_equal_transformers(tmp_path, family):
    hf_model = save_family(tmp_path, family)
    model, _ = checkpoint.load_model(str(tmp_path))
    assert model.config.qk_norm == (family == 'qwen3') and model.config.qkv_bias == family.startswith('qwen2')
    assert model.config.rope_scaling == ((8.0, 1.0, 4.0, 8) if family == 'llama3_tied' else ())
    idx = context()
    with torch.no_grad():
        torch.testing.assert_close(all_logits(model, idx), hf_model(idx).logits, atol=1e-5, rtol=0)
        prompt = idx[:, :5]
        expected = hf_model.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    cached = model.generate(prompt, 12, temperature=0)
    assert torch.equal(cached, expected)
    recomputed = prompt  # the oracle: the whole sequence again at every step, no cache
    for _ in range(12):
        recomputed = torch.cat((recomputed, all_logits(model, recomputed)[:, -1:].argmax(-1)), dim=1)
    assert torch.equal(cached, recomputed)


def test_sharded_folder(tmp_path):
    folder = tmp_path / 'shards'
    hf_model = save_family(folder, 'qwen3')
    index = json.loads((folder / 'model.safetensors.index.json').read_text())
    assert len(set(index['weight_map'].values())) > 1 and not (folder / 'model.safetensors').exists()
    idx = context()
    with torch.no_grad():
        torch.testing.assert_close(all_logits(checkpoint.load_model(str(folder))[0], idx), hf_model(idx).logits,
                                   atol=1e-5, rtol=0)


def test_bf16_weights_stay_bf16_and_are_not_copied(tmp_path):
    save_family(tmp_path, 'llama', dtype=torch.bfloat16)
    assert json.loads((tmp_path / 'config.json').read_text()).get('dtype', 'bfloat16') == 'bfloat16'
    model, _ = checkpoint.load_model(str(tmp_path))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    # each tensor read once and assigned: a projection is the file's tensor itself, not a float32 copy of it
    stored = load_file(tmp_path / 'model.safetensors')
    assert torch.equal(model.transformer.h[1].mlp.c_proj.weight, stored['model.layers.1.mlp.down_proj.weight'])
    assert model.transformer.h[0].attn.rotary.cos.dtype == torch.float32 and not model.rotary.cos.is_meta


@pytest.mark.parametrize('family', ['llama3_tied', 'qwen2_tied', 'qwen3'])
def test_export_round_trip_reads_back_equal(tmp_path, family):
    hf_model = save_family(tmp_path / 'src', family)
    (tmp_path / 'src' / 'tokenizer_config.json').write_text('{"eos_token": "x"}')
    result = run('export.py', f'--init_from={tmp_path / "src"}', f'--to={tmp_path / "out"}')
    assert result.returncode == 0, result.stderr
    assert FAMILIES[family][1] in result.stdout
    assert (tmp_path / 'out' / 'tokenizer_config.json').read_text() == '{"eos_token": "x"}'
    original, again = load_file(tmp_path / 'src' / 'model.safetensors'), load_file(tmp_path / 'out' / 'model.safetensors')
    assert set(original) == set(again) and all(torch.equal(original[k], again[k]) for k in original)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'out').eval()
    assert type(reloaded).__name__ == FAMILIES[family][1]
    idx = context()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, hf_model(idx).logits, atol=1e-5, rtol=0)


def test_export_from_a_checkpoint_picks_the_family(tmp_path):
    for args, architecture in ((dict(qkv_bias=True), 'Qwen2ForCausalLM'), (dict(qk_norm=True, head_size=16),
                                                                              'Qwen3ForCausalLM')):
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=16, vocab_size=71,
                              norm='rmsnorm', pos_emb='rope', mlp='swiglu', bias=False, norm_eps=1e-6,
                              rope_scaling=(8.0, 1.0, 4.0, 8), **args))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        folder = tmp_path / architecture
        assert hf_io.export_hf(model, str(folder)) == architecture
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        idx = context(length=16)
        with torch.no_grad():
            torch.testing.assert_close(all_logits(model, idx), hf_model(idx).logits, atol=1e-5, rtol=0)


def test_scripts_read_a_folder(tmp_path):
    """sample.py, sizing.py and train.py (a finetune, then resumed) on a Qwen3 folder; a char dataset supplies
    the tokenizer (the folder's own tokenizer.json is the tokenizer module's)."""
    folder = tmp_path / 'qwen3'
    hf_model = save_family(folder, 'qwen3')
    data = write_char_dataset(tmp_path / 'data')
    out = tmp_path / 'out'
    train = ('train.py', f'--init_from={folder}', f'--data_dir={data}', f'--out_dir={out}', '--device=cpu',
             '--dtype=float32', '--batch_size=2', '--block_size=16', '--eval_iters=1', '--eval_interval=2',
             '--log_interval=1', '--learning_rate=1e-3', '--warmup_iters=0', '--compile=False')
    sample, sizing, trained, changed = run_all(
        ('sample.py', f'--init_from={folder}', f'--data_dir={data}', '--start=the king', '--max_new_tokens=5',
         '--temperature=0', '--device=cpu', '--dtype=float32', '--num_samples=1'),
        ('sizing.py', f'--init_from={folder}', '--json', '--device_memory=1GB'),
        (*train, '--max_iters=2', '--gradient_accumulation_steps=1'),
        (*train, '--max_iters=1', '--n_head=2', f'--out_dir={tmp_path / "out2"}'))
    assert_one_line_error(changed, 'n_head=2 was asked for', 'has n_head=4')
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith('the king')
    assert sizing.returncode == 0, sizing.stderr
    report = json.loads(sizing.stdout)
    assert report['parameters']['total'] == sum(p.numel() for p in hf_model.parameters())
    assert trained.returncode == 0, trained.stderr
    ckpt = checkpoint.load(str(out / 'ckpt.pt'))
    assert ckpt['iter_num'] == 2 and ckpt['model_args']['qk_norm'] and ckpt['model_args']['head_size'] == 16
    resumed = run(*train, '--init_from=resume', '--max_iters=4', '--gradient_accumulation_steps=1')
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.load(str(out / 'ckpt.pt'))['iter_num'] == 4


def damage(folder, how):
    config_file = folder / 'config.json'
    config = json.loads(config_file.read_text())
    if how == 'config is a list':
        config_file.write_text('[1, 2]')
    elif how == 'unknown architecture':
        config_file.write_text(json.dumps(dict(config, architectures=['MistralForCausalLM'], model_type='mistral')))
    elif how == 'sliding window':
        config_file.write_text(json.dumps(dict(config, use_sliding_window=True)))
    elif how == 'missing tensor':
        tensors = load_file(folder / 'model.safetensors')
        del tensors['model.layers.1.self_attn.k_norm.weight']
        save_file(tensors, folder / 'model.safetensors')
    elif how == 'misshaped tensor':
        tensors = load_file(folder / 'model.safetensors')
        tensors['model.layers.0.mlp.up_proj.weight'] = tensors['model.layers.0.mlp.up_proj.weight'][:5].clone()
        save_file(tensors, folder / 'model.safetensors')
    elif how == 'weight_map escapes':
        os.remove(folder / 'model.safetensors')
        (folder / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': {'x': '../secret.safetensors'}}))


DAMAGES = {
    'config is a list': 'holds a list, not a JSON object',
    'unknown architecture': "describes a 'MistralForCausalLM' model, which this GPT does not compute",
    'sliding window': 'use_sliding_window=True',
    'missing tensor': 'lacks the tensor model.layers.1.self_attn.k_norm.weight',
    'misshaped tensor': 'model.layers.0.mlp.up_proj.weight has shape (5, 32)',
    'weight_map escapes': '../secret.safetensors',
}


def test_damaged_folders_fail_in_one_line(tmp_path):
    """Each damage is one line naming it; two of them through sample.py: exit status 1, no traceback."""
    save_family(tmp_path / 'whole', 'qwen3')
    folders = {}
    for i, how in enumerate(DAMAGES):
        folders[how] = shutil.copytree(tmp_path / 'whole', tmp_path / f'm{i}')
        damage(folders[how], how)
        with pytest.raises((ValueError, OSError)) as e:
            checkpoint.load_model(str(folders[how]))
        assert DAMAGES[how] in str(e.value) and '\n' not in str(e.value)
    through_scripts = ('unknown architecture', 'missing tensor')
    results = run_all(*[('sample.py', f'--init_from={folders[how]}', '--device=cpu', '--max_new_tokens=2')
                        for how in through_scripts])
    for how, result in zip(through_scripts, results):
        assert_one_line_error(result, DAMAGES[how])


def test_hub_id_from_the_hf_cache(tmp_path, monkeypatch):
    """A hub id reads its snapshot in the Hugging Face cache (downloaded there by snapshot_download online)."""
    from huggingface_hub import constants
    cache = tmp_path / 'hf_cache'
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    snapshot = cache / 'models--org--tiny-qwen2' / 'snapshots' / ('a' * 40)
    hf_model = save_family(snapshot, 'qwen2_tied')
    (cache / 'models--org--tiny-qwen2' / 'refs').mkdir()
    (cache / 'models--org--tiny-qwen2' / 'refs' / 'main').write_text('a' * 40)
    model, source = checkpoint.load_model('org/tiny-qwen2')
    assert source.path == str(snapshot)
    idx = context()
    with torch.no_grad():
        torch.testing.assert_close(all_logits(model, idx), hf_model(idx).logits, atol=1e-5, rtol=0)
    with pytest.raises(OSError, match="init_from='org/absent' is no local folder"):
        checkpoint.load_model('org/absent')


# the published parameter counts of the models these presets describe
PRESETS = {'smollm2_135m': 134_515_008, 'qwen2_5_0_5b': 494_032_768, 'qwen3_0_6b': 596_049_920,
           'llama3_2_1b': 1_235_814_400, 'tinyllama_1b': 1_100_048_384}


@pytest.mark.parametrize('preset', PRESETS)
def test_preset_parameter_counts_equal_the_published_models(preset):
    """The preset as our GPT and, through the config.json that export writes for it, as transformers' model of
    that architecture: both the published count, and the same tensor shapes under Hugging Face's names."""
    config = GPTConfig(**read_config_file(os.path.join(ROOT, 'config', f'model_{preset}.py'), {}))
    settings = hf_io.llama_config(config, hf_io.hf_layout(config), {})
    with torch.device('meta'):
        ours = GPT(config)
        reference = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(settings.pop('model_type'), **settings))
    assert sum(p.numel() for p in reference.parameters()) == PRESETS[preset]
    assert sum(p.numel() for p in ours.parameters()) == PRESETS[preset]
    tied = {'lm_head.weight'} if config.tie_embeddings else set()
    assert {k: v.shape for k, v in hf_io.llama_tensors(ours).items()} == \
        {k: v.shape for k, v in reference.state_dict().items() if k not in tied}


def test_finetune_under_ddp_and_fsdp_equals_one_process(char_data, tmp_path):
    """A Qwen3 folder (its q/k norms inside the FSDP units) finetuned by torchrun's 2 processes, DDP and FSDP:
    the losses of one process within fp32 rounding."""
    save_family(tmp_path / 'qwen3', 'qwen3')

    def train(out, *extra):
        return ('train.py', f'--init_from={tmp_path / "qwen3"}', f'--data_dir={char_data}', f'--out_dir={out}',
                '--device=cpu', '--dtype=float32', '--compile=False', '--batch_size=2', '--block_size=16',
                '--gradient_accumulation_steps=4', '--max_iters=3', '--eval_interval=3', '--eval_iters=2',
                '--log_interval=1', '--warmup_iters=0', '--learning_rate=1e-3', *extra)
    commands = [train(tmp_path / 'one'), train(tmp_path / 'ddp'), train(tmp_path / 'fsdp', '--parallel=fsdp')]
    results = [run(*command, processes=processes) for command, processes in zip(commands, (None, 2, 2))]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    reference = losses(tmp_path / 'one')
    for run_dir in ('ddp', 'fsdp'):
        ours = losses(tmp_path / run_dir)
        assert ours.keys() == reference.keys() and len(ours) == 3
        assert all(abs(ours[k] - reference[k]) <= 1e-5 * reference[k] for k in reference), (run_dir, ours, reference)


def losses(out_dir):
    return {r['iter']: r['loss'] for r in read_metrics(out_dir) if 'loss' in r}


def test_evaluate_scores_a_llama_folder_as_transformers_does(tmp_path):
    """evaluate.py's HellaSwag rule (the context's GPT-2 tokens, then " " + each ending's; the ending with the
    lowest summed / mean loss wins) on a Llama folder with GPT-2's vocabulary, recomputed here with transformers."""
    enc = gpt2_encoding()
    hf_model = save_family(tmp_path / 'llama', 'llama', vocab_size=50257, max_position_embeddings=64)
    examples = [('A man is sitting on a roof. He', ['is using wrap to wrap a pair of skis.', 'is ripping level tiles off.',
                                                   "is holding a rubik's cube.", 'starts pulling up roofing.'], 3),
                ('We see a woman in a kitchen. She', ['cuts a cake.', 'bakes', 'washes her hands in the sink.',
                                                      'leaves.'], 0),
                ('A boy is running down a track. The boy', ['runs into a car.', 'gets in a mat.', 'lifts his body.',
                                                           'stands on his hands and springs.'], 2)]
    with open(tmp_path / 'val.jsonl', 'w') as f:
        for ctx, endings, label in examples:
            f.write(json.dumps({'ctx': ctx, 'endings': endings, 'label': label}) + '\n')
    correct = correct_norm = 0
    for ctx, endings, label in examples:
        summed, mean = [], []
        for ending in endings:
            context, tail = enc.encode(ctx), enc.encode(' ' + ending)
            tokens = torch.tensor([context + tail])
            with torch.no_grad():
                losses = torch.nn.functional.cross_entropy(hf_model(tokens[:, :-1]).logits[0], tokens[0, 1:],
                                                           reduction='none')[len(context) - 1:]
            summed.append(losses.sum().item())
            mean.append(losses.mean().item())
        correct += min(range(4), key=summed.__getitem__) == label
        correct_norm += min(range(4), key=mean.__getitem__) == label
    result = run('evaluate.py', f'--init_from={tmp_path / "llama"}', f'--data={tmp_path / "val.jsonl"}', '--json=True',
                 '--device=cpu', '--dtype=float32')
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert (scores['n'], scores['acc'], scores['acc_norm']) == (3, correct / 3, correct_norm / 3)
