"""LoRA (issue 23): the adapter math in-process (B = 0 is the base exactly, merged equals base + adapters), and
LoRA runs of train.py as a user makes them, on a tiny Llama-style base written as a Hugging Face folder: the frozen
base stays bitwise unchanged, the checkpoint is small and names its base, a SIGKILLed run resumes bitwise, 2 DDP
processes equal 1, sample.py and evaluate.py read the checkpoint, a changed base and bad settings are one line."""
import json
import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import checkpoint
import dataset
import hf
import lora
import machine as machines
from configurator import configure
from helpers import (assert_one_line_error, copy_checkpoint, finish, read_metrics, run, run_all, start,
                     without_timings)
from model import GPT, GPTConfig
from training import DEFAULTS, TYPES_OF_NONE, setting_problems

LLAMA_STYLE = dict(n_layer=2, n_head=4, n_embd=128, block_size=32, bias=False, norm='rmsnorm', pos_emb='rope',
                   mlp='swiglu', n_kv_head=2)


def tiny_gpt(vocab_size=40, seed=0, **changes):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**dict(LLAMA_STYLE, vocab_size=vocab_size, **changes))).eval()


def logits(model, idx):
    with torch.no_grad():
        return model(idx, targets=idx)[0]


@pytest.fixture(scope='module')
def base(char_data, tmp_path_factory):
    """A Hugging Face folder of a random Llama-style model of the char data's vocabulary."""
    folder = tmp_path_factory.mktemp('base') / 'hf'
    hf.export_hf(tiny_gpt(dataset.load_meta(char_data)['vocab_size']), str(folder))
    return str(folder)


def lora_run(data_dir, out_dir, *extra):
    return [f'--data_dir={data_dir}', f'--out_dir={out_dir}', '--device=cpu', '--dtype=float32', '--compile=False',
            '--batch_size=2', '--block_size=32', '--gradient_accumulation_steps=4', '--max_iters=6',
            '--eval_interval=3', '--eval_iters=2', '--log_interval=1', '--warmup_iters=0', '--learning_rate=1e-2',
            '--lora_rank=2', '--lora_alpha=8', *extra]


# train.main with a look at the model it saves: the frozen base's tensors at the last save
KEEP_THE_BASE = """
import sys, torch, lora, train
entries = lora.checkpoint_entries
def keeping_the_base(model):
    torch.save({k: v.clone() for k, v in model.state_dict().items() if '.lora_' not in k}, sys.argv[1])
    return entries(model)
lora.checkpoint_entries = keeping_the_base
train.main(sys.argv[2:])
"""


@pytest.fixture(scope='module')
def runs(base, char_data, tmp_path_factory):
    """A LoRA run of 6 iterations (4 micro-steps each), on one process and on 2 DDP processes (torchrun, gloo)."""
    root = tmp_path_factory.mktemp('lora_runs')
    one, ddp = root / 'one', root / 'ddp'
    results = [run('-c', KEEP_THE_BASE, root / 'base_after.pt', *lora_run(char_data, one, f'--init_from={base}')),
               run('train.py', *lora_run(char_data, ddp, f'--init_from={base}'), processes=2)]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    return {'one': one, 'ddp': ddp, 'base_after': root / 'base_after.pt'}


def test_b_zero_is_the_base_exactly_and_merged_equals_base_plus_adapters():
    """Rank 4 on every target with B = 0 gives the base's logits bit for bit; with B drawn, the merged model (one
    ordinary GPT) gives the adapted model's logits within 1e-5."""
    idx = torch.randint(0, 40, (2, 32), generator=torch.Generator().manual_seed(1))
    reference = logits(tiny_gpt(), idx)
    adapted = lora.add_adapters(tiny_gpt(), 4, 16.0, 0.0, lora.TARGETS).eval()
    assert sum(isinstance(m, lora.LoRALinear) for m in adapted.modules()) == 2 * len(lora.TARGETS)
    assert DEFAULTS['lora_targets'] == ','.join(lora.TARGETS)  # every target by default
    assert torch.equal(logits(adapted, idx), reference)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if name.endswith('lora_B'):
                p.normal_(0, 0.05)
    trained = logits(adapted, idx)
    assert (trained - reference).abs().max() > 1e-2  # the adapters change the model
    merged = lora.merge(adapted)
    assert not any(isinstance(m, lora.LoRALinear) for m in merged.modules())
    assert not any('lora_' in k for k in merged.state_dict())
    assert torch.allclose(logits(merged, idx), trained, atol=1e-5, rtol=0)


def test_a_bf16_base_trains_only_the_float32_adapters():
    """lora_base_dtype=bfloat16 under bf16 autocast: the blocks' matrices are held in bf16, the adapters in float32
    and they alone get gradients."""
    model = lora.add_adapters(tiny_gpt(), 4, 16.0, 0.1, ('attn.c_attn', 'mlp.c_proj'), torch.bfloat16).train()
    idx = torch.randint(0, 40, (2, 32), generator=torch.Generator().manual_seed(1))
    with machines.setup('cpu', 'bfloat16', False).autocast():
        _, loss = model(idx, idx)
    loss.backward()
    assert model.transformer.h[0].mlp.c_fc.weight.dtype == torch.bfloat16
    assert model.transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16
    assert {n for n, p in model.named_parameters() if p.grad is not None} == \
        {n for n, p in model.named_parameters() if 'lora_' in n}
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if 'lora_' in n)


def test_frozen_base_unchanged_and_the_checkpoint_small(runs, base):
    """After training, the base's tensors are bitwise those of the folder; the checkpoint holds the adapters (and
    their optimizer state) only, names its base and is under a tenth of the base's weights."""
    after = torch.load(runs['base_after'], weights_only=True)
    model, _ = checkpoint.load_model(base)
    assert after.keys() == model.state_dict().keys()
    assert all(torch.equal(after[k], v) for k, v in model.state_dict().items())
    ckpt = checkpoint.load(runs['one'] / 'ckpt.pt')
    assert ckpt['model'] and all('.lora_' in k for k in ckpt['model'])
    assert ckpt['lora']['base'] == {'init_from': base, 'seed': 1337, 'fingerprint': lora.fingerprint(model)}
    assert ckpt['lora']['lora_rank'] == 2 and ckpt['iter_num'] == 6
    n_adapters = sum(v.numel() for v in ckpt['model'].values())
    assert len(ckpt['optimizer']['state']) == len(ckpt['model'])  # AdamW holds the adapters only
    assert n_adapters < 0.05 * sum(p.numel() for p in model.parameters())
    size, base_size = os.path.getsize(runs['one'] / 'ckpt.pt'), os.path.getsize(os.path.join(base, 'model.safetensors'))
    assert size < 0.1 * base_size, (size, base_size)


def test_two_ddp_processes_equal_one(runs):
    """torchrun's 2 processes, each 2 of the 4 micro-steps, log the one process's losses within fp32 rounding."""
    one, ddp = (without_timings(read_metrics(runs[k])) for k in ('one', 'ddp'))
    assert [r['iter'] for r in one] == [r['iter'] for r in ddp] and len(one) == 9
    for a, b in zip(one, ddp):
        for key in ('loss', 'val_loss', 'train_loss'):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), (key, a, b)
    assert one[-1]['val_loss'] < one[0]['val_loss']  # the adapters learn


def test_sample_and_evaluate_read_a_lora_checkpoint(runs, char_data):
    """evaluate.py --task=bpb on the merged checkpoint gives the run's last eval (the same batches) within fp32
    rounding; sample.py generates from it."""
    evaluated, sampled = run_all(
        ('evaluate.py', '--task=bpb', f"--out_dir={runs['one']}", '--json=True', '--device=cpu', '--dtype=float32',
         '--eval_iters=2', '--batch_size=2'),
        ('sample.py', f"--out_dir={runs['one']}", '--device=cpu', '--max_new_tokens=8', '--seed=3'))
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert result['val_loss'] == pytest.approx(read_metrics(runs['one'])[-1]['val_loss'], rel=1e-5)
    assert sampled.returncode == 0, sampled.stderr
    assert len(sampled.stdout) > 8


def test_a_trained_lora_run_exports_merged_and_as_a_peft_adapter(runs, base, tmp_path):
    """train.py's LoRA checkpoint through export.py, as a user runs it: the merged folder and the PEFT adapter on
    the base folder (peft onto transformers) give the same logits, which are our merged checkpoint's."""
    transformers = pytest.importorskip('transformers')
    peft = pytest.importorskip('peft')
    merged, adapter = tmp_path / 'merged', tmp_path / 'adapter'
    results = run_all(('export.py', f"--out_dir={runs['one']}", f'--to={merged}'),
                      ('export.py', f"--out_dir={runs['one']}", f'--to={adapter}', '--adapter=True'))
    for result in results:
        assert result.returncode == 0, result.stderr
    ours, _ = checkpoint.load_model('resume', str(runs['one']))
    idx = torch.randint(0, ours.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(idx, targets=idx)[0]
        from_merged = transformers.AutoModelForCausalLM.from_pretrained(merged)(idx).logits
        with_adapter = peft.PeftModel.from_pretrained(
            transformers.AutoModelForCausalLM.from_pretrained(base), adapter)(idx).logits
    torch.testing.assert_close(from_merged, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(with_adapter, expected, rtol=0, atol=1e-5)


def test_another_base_is_one_line(runs, base, char_data, tmp_path):
    """The base folder changed (one weight) under a LoRA checkpoint: resuming and loading it (sample.py, as
    evaluate.py and serve.py do) fail in one line naming the fingerprint; the checkpoint stays as it was."""
    changed = tmp_path / 'changed'
    os.makedirs(changed)
    tensors = load_file(os.path.join(base, 'model.safetensors'))
    name = next(k for k in tensors if 'layers.0.mlp' in k)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, changed / 'model.safetensors', metadata={'format': 'pt'})
    (changed / 'config.json').write_bytes(open(os.path.join(base, 'config.json'), 'rb').read())

    def point_at_changed(ckpt):
        ckpt['lora']['base']['init_from'] = str(changed)
    out = copy_checkpoint(runs['one'], tmp_path / 'run', point_at_changed)
    before = (tmp_path / 'run' / 'ckpt.pt').read_bytes()
    results = run_all(
        ('train.py', *lora_run(char_data, out, '--init_from=resume', '--max_iters=8')),
        ('sample.py', f'--out_dir={out}', '--device=cpu', '--max_new_tokens=2'))
    for result in results:
        assert_one_line_error(result, str(changed), 'fingerprint')
    assert (tmp_path / 'run' / 'ckpt.pt').read_bytes() == before


def test_sigkilled_lora_run_resumes_bitwise(char_data, tmp_path):
    """A LoRA run on a new (scratch) base held in bf16 (bf16 autocast), with adapter dropout, SIGKILLed after its first save and resumed with
    --init_from=resume (base drawn again from the recorded seed, checked by its fingerprint), logs the uninterrupted
    run's losses bit for bit and ends with the same adapters and optimizer state."""
    argv = [*lora_run(char_data, '', '--init_from=scratch', '--n_layer=2', '--n_head=2', '--n_embd=32',
                      '--lora_dropout=0.1', '--dropout=0.1', '--max_iters=30', '--eval_interval=5', '--dtype=bfloat16',
                      '--gradient_accumulation_steps=2')]
    argv.remove('--out_dir=')
    whole, killed = tmp_path / 'whole', tmp_path / 'killed'
    proc = start('train.py', *argv, f'--out_dir={killed}', capture=False)
    uninterrupted = start('train.py', *argv, f'--out_dir={whole}')
    deadline = time.time() + 120
    while not (killed / 'ckpt.pt').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the run ended before it was killed'
    assert checkpoint.load(killed / 'ckpt.pt')['iter_num'] < 30
    resumed = run('train.py', *argv, f'--out_dir={killed}', '--init_from=resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole_result = finish(uninterrupted)
    assert whole_result.returncode == 0, whole_result.stderr[-3000:]
    assert 'the base is frozen in bfloat16' in whole_result.stdout  # lora_base_dtype='auto' under bf16 autocast
    assert without_timings(read_metrics(killed)) == without_timings(read_metrics(whole))
    a, b = checkpoint.load(whole / 'ckpt.pt'), checkpoint.load(killed / 'ckpt.pt')
    assert a['model'].keys() == b['model'].keys() and all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    assert all(torch.equal(a['optimizer']['state'][i]['exp_avg'], b['optimizer']['state'][i]['exp_avg'])
               for i in a['optimizer']['state'])


def test_bad_settings_are_one_line_each(runs, base, char_data, tmp_path):
    """Out-of-range LoRA settings, Muon and FSDP: all named in one line by train.py, nothing written. A bf16 base
    without bf16 autocast, a resume with other LoRA settings and LoRA on a full checkpoint's resume: refused before
    anything is built, with the fix (cli turns each into one line)."""
    result = run('train.py', *lora_run(char_data, tmp_path / 'a', f'--init_from={base}', '--lora_rank=-1',
                                       '--lora_alpha=0', '--lora_dropout=1.0', '--lora_targets=attn.c_q,mlp.c_fc',
                                       '--lora_base_dtype=int8', '--optimizer=muon', '--parallel=fsdp'))
    assert_one_line_error(result, 'lora_rank=-1', 'lora_alpha=0', 'lora_dropout=1.0', 'attn.c_q',
                          "lora_base_dtype='int8'", "optimizer='muon' is not supported",
                          'parallel=fsdp (and cpu_offload) is not supported')
    assert not (tmp_path / 'a').exists()
    meta, machine = dataset.load_meta(char_data), machines.setup('cpu', 'float32', False)
    full = copy_checkpoint(runs['one'], tmp_path / 'full', lambda ckpt: ckpt.pop('lora'))
    for out_dir, argv, message in (
            (tmp_path / 'b', [f'--init_from={base}', '--lora_base_dtype=bfloat16'], 'needs --dtype=bfloat16'),
            (runs['one'], ['--init_from=resume', '--lora_rank=8'], 'resume it with --lora_rank=2 --lora_alpha=8.0'),
            (full, ['--init_from=resume'], 'is a full model, not a LoRA run: .* export it')):
        cfg = configure(DEFAULTS, lora_run(char_data, out_dir, *argv), TYPES_OF_NONE)
        assert setting_problems(cfg) == []
        with pytest.raises(ValueError, match=message):
            checkpoint.init_model(cfg, meta, machine)
    assert checkpoint.load(runs['one'] / 'ckpt.pt')['iter_num'] == 6
    for damage in (lambda ckpt: ckpt['lora'].pop('base'), lambda ckpt: ckpt['lora'].update(lora_rank='2')):
        damaged = copy_checkpoint(runs['one'], tmp_path / 'damaged', damage)
        with pytest.raises(ValueError, match='has a damaged LoRA record'):
            checkpoint.load_model('resume', damaged)
    damaged = copy_checkpoint(runs['one'], tmp_path / 'damaged', lambda ckpt: ckpt['model'].popitem())
    with pytest.raises(ValueError, match='the adapters in .* do not match its LoRA settings'):
        checkpoint.load_model('resume', damaged)
