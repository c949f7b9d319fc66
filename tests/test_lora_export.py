"""LoRA models out to Hugging Face (issue 23): the PEFT adapter folder that export.py writes loads with peft onto
transformers' model of the exported base and computes our base + adapters; the merged export loads with
transformers alone and computes the same. Tiny random models with random B (at init B = 0 would hide any mistake);
the LoRA checkpoint is written here in the layout of a LoRA run (its adapters, settings and base's init_from)."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import checkpoint
import hf as hf_io
import lora
from helpers import assert_one_line_error, run_all
from model import GPT, GPTConfig

transformers = pytest.importorskip('transformers', reason='transformers is the reference for these tests')
peft = pytest.importorskip('peft', reason='peft reads the adapter folder (requirements-dev.txt)')

MODELS = {  # Llama with grouped-query attention (2 key/value heads for 4 query heads), and GPT-2
    'llama_gqa': dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, d_ff=48, block_size=16, vocab_size=71,
                      norm='rmsnorm', pos_emb='rope', mlp='swiglu', bias=False, tie_embeddings=False),
    'gpt2': dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=71),
}
RANK, ALPHA = 4, 8.0


def random_model(name):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODELS[name]))
    with torch.no_grad():  # wider than at init, so that a swapped tensor shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def with_adapters(model):
    """The model with rank-4 adapters on every target, B drawn at random."""
    lora.add_adapters(model, RANK, ALPHA, 0.0, lora.TARGETS)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('lora_B'):
                p.normal_(0, 0.2)
    return model.eval()


def all_logits(model, idx):
    with torch.no_grad():
        return model(idx, targets=idx)[0]  # with targets, every position's logits


def context(seed=1):
    return torch.randint(0, 71, (2, 16), generator=torch.Generator().manual_seed(seed))


def peft_model(base_folder, adapter_folder):
    base = transformers.AutoModelForCausalLM.from_pretrained(base_folder)
    return peft.PeftModel.from_pretrained(base, adapter_folder).eval()


@pytest.mark.parametrize('name', MODELS)
def test_peft_adapter_loads_onto_transformers_and_gives_our_logits(tmp_path, name):
    model = random_model(name)
    hf_io.export_hf(model, str(tmp_path / 'base'))  # the base, before the adapters wrap its matrices
    model = with_adapters(model)
    architecture = hf_io.export_peft(model.config, lora.adapter_state(model), RANK, ALPHA, 0.0,
                                     str(tmp_path / 'adapter'), str(tmp_path / 'base'))
    adapter_config = json.loads((tmp_path / 'adapter' / 'adapter_config.json').read_text())
    assert adapter_config['fan_in_fan_out'] == (architecture == 'GPT2LMHeadModel')  # Conv1D stores (in, out)
    assert adapter_config['target_modules'] == (
        ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'] if name == 'gpt2' else
        ['mlp.down_proj', 'mlp.gate_proj', 'mlp.up_proj', 'self_attn.k_proj', 'self_attn.o_proj', 'self_attn.q_proj',
         'self_attn.v_proj'])
    idx = context()
    theirs = peft_model(tmp_path / 'base', tmp_path / 'adapter')
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, all_logits(model, idx), atol=1e-5, rtol=0)
    # every tensor of the adapter was read into a module (a misnamed one is skipped with a mere warning)
    loaded = [k for k in theirs.state_dict() if '.lora_' in k]
    assert len(loaded) == len(load_file(tmp_path / 'adapter' / 'adapter_model.safetensors')) == (
        2 * MODELS[name]['n_layer'] * (4 if name == 'gpt2' else 7))


@pytest.mark.parametrize('name', MODELS)
def test_merged_export_equals_base_plus_adapters(tmp_path, name):
    model = with_adapters(random_model(name))
    idx = context()
    expected = all_logits(model, idx)
    hf_io.export_hf(lora.merge(model), str(tmp_path))
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(idx).logits, expected, atol=1e-5, rtol=0)


def write_lora_run(folder, base_folder, adapters):
    """out_dir/ckpt.pt of a LoRA run on the base in base_folder, as train.py --lora_rank=4 writes it: the adapters
    as the model, and the settings and base's identity as its 'lora' entry."""
    record = dict(base=dict(init_from=str(base_folder), seed=1337, fingerprint=lora.fingerprint(checkpoint.load_model(str(base_folder))[0])),
                  lora_rank=RANK, lora_alpha=ALPHA, lora_dropout=0.0, lora_targets=','.join(lora.TARGETS),
                  lora_base_dtype='bfloat16')
    base_args = checkpoint.model_args(GPTConfig(**hf_io.model_args(str(base_folder))))
    checkpoint.save({'model': adapters, 'lora': record, 'model_args': base_args, 'optimizer': {}, 'iter_num': 10,
                     'best_val_loss': 1.0, 'config': dict(init_from=str(base_folder), lora_rank=RANK)},
                    os.path.join(folder, 'ckpt.pt'))


@pytest.fixture(scope='module')
def lora_run(tmp_path_factory):
    """(out_dir of a LoRA run on a Llama folder, the base folder, our logits of base + adapters)."""
    root = tmp_path_factory.mktemp('lora_run')
    hf_io.export_hf(random_model('llama_gqa'), str(root / 'base'))
    model, _ = checkpoint.load_model(str(root / 'base'))
    write_lora_run(root / 'out', root / 'base', lora.adapter_state(with_adapters(model)))
    return root / 'out', root / 'base', all_logits(model, context())


def test_export_py_writes_merged_model_and_peft_adapter(lora_run, tmp_path):
    out_dir, base, expected = lora_run
    merged, adapter, exact = run_all(
        ('export.py', f'--out_dir={out_dir}', f'--to={tmp_path / "merged"}'),
        ('export.py', f'--out_dir={out_dir}', f'--to={tmp_path / "adapter"}', '--adapter=True'),
        ('export.py', f'--out_dir={out_dir}', f'--to={tmp_path / "adapter2"}', '--adapter=True',
         f'--base_to={tmp_path / "base2"}'))
    for result in (merged, adapter, exact):
        assert result.returncode == 0, result.stderr
    assert 'base + LoRA adapters, merged' in merged.stdout and 'rank 4' in adapter.stdout
    idx = context()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'merged').eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, expected, atol=1e-5, rtol=0)
        # --base_to: the base written again, and recorded as the adapter's
        recorded = json.loads((tmp_path / 'adapter2' / 'adapter_config.json').read_text())['base_model_name_or_path']
        assert recorded == str(tmp_path / 'base2')
        torch.testing.assert_close(peft_model(recorded, tmp_path / 'adapter2')(idx).logits, expected, atol=1e-5, rtol=0)
        # without --base_to the base is the run's: its init_from, here a folder, as an absolute path
        config = json.loads((tmp_path / 'adapter' / 'adapter_config.json').read_text())
        assert config['base_model_name_or_path'] == str(base) and config['peft_type'] == 'LORA'
        assert (config['r'], config['lora_alpha'], config['bias'], config['task_type']) == (RANK, ALPHA, 'none',
                                                                                            'CAUSAL_LM')
        by_name = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / 'adapter').eval()  # finds it there
        torch.testing.assert_close(by_name(idx).logits, expected, atol=1e-5, rtol=0)


def test_export_py_refuses_what_it_cannot_export(lora_run, tmp_path):
    out_dir, base, _ = lora_run
    model = random_model('gpt2')  # a run without LoRA
    checkpoint.save({'model': model.state_dict(), 'model_args': checkpoint.model_args(model.config), 'config': {}},
                    str(tmp_path / 'full' / 'ckpt.pt'))
    wrong_rank = tmp_path / 'wrong_rank'
    adapters = torch.load(out_dir / 'ckpt.pt', weights_only=True)['model']
    write_lora_run(wrong_rank, base, {k: v[:2] if k.endswith('lora_A') else v for k, v in adapters.items()})
    not_lora, mismatch, taken = run_all(
        ('export.py', f'--out_dir={tmp_path / "full"}', f'--to={tmp_path / "a"}', '--adapter=True'),
        ('export.py', f'--out_dir={wrong_rank}', f'--to={tmp_path / "b"}'),
        ('export.py', f'--out_dir={out_dir}', f'--to={base}', '--adapter=True', f'--base_to={base}'))
    assert_one_line_error(not_lora, 'is not one', 'drop them')
    assert_one_line_error(mismatch, 'do not match', 'lora_A')
    assert_one_line_error(taken, 'already holds', '--force=True')
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()
