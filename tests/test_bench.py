import json
import os
import sys

import pytest
import torch

import bench
import dataset
import machine
import sample
from configurator import Config
from helpers import ROOT, run
from model import GPT, GPTConfig

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import generate_speed  # noqa: E402
import sample_recompute  # noqa: E402

TINY = ['--device=cpu', '--dtype=float32', '--compile=False', '--n_layer=2', '--n_head=2', '--n_embd=32',
        '--block_size=32', '--batch_size=4', '--steps=3', '--warmup=1', '--prompt_tokens=8', '--generate_tokens=6']


def check_result(result, tokens_per_iter):
    train = result['train']
    ms = train['ms_per_iter']
    assert 0 < ms['min'] <= ms['median'] <= ms['max']
    assert train['tokens_per_iter'] == tokens_per_iter
    assert train['tokens_per_s'] == pytest.approx(tokens_per_iter / ms['median'] * 1000)
    assert train['tflops'] == pytest.approx(train['flops_per_token'] * train['tokens_per_s'] / 1e12)
    assert 0 < train['mfu'] < 1  # against this CPU's measured matmul peak
    assert result['memory']['resident'] > 0  # peak memory (on a GPU: allocated and reserved)
    generate = result['generate']
    assert generate['new_tokens'] == 6 and generate['prompt_tokens'] == 8
    for key in ('prefill_ms', 'decode_tokens_per_s'):
        assert 0 < generate[key]['min'] <= generate[key]['median'] <= generate[key]['max']


def test_synthetic_json(capsys):
    result = bench.main(TINY + ['--synthetic=True', '--vocab_size=64', '--json=True'])
    out, err = capsys.readouterr()
    assert json.loads(out) == json.loads(json.dumps(result))  # stdout is exactly the JSON
    assert 'ms/iter' in err and 'tokens/s' in err  # the report went to stderr
    assert result['data'] == 'synthetic' and result['model_args']['vocab_size'] == 64
    check_result(result, 4 * 32)


def test_real_data(char_data, capsys):
    """Batches come from the memmapped bins; gradient accumulation multiplies the tokens per step."""
    result = bench.main(TINY + [f'--data_dir={char_data}', '--gradient_accumulation_steps=2'])
    assert result['data'] == char_data and result['config']['synthetic'] is False
    assert result['model_args']['vocab_size'] == dataset.load_meta(char_data)['vocab_size']
    check_result(result, 2 * 4 * 32)
    out = capsys.readouterr().out
    assert 'MFU' in out and 'decode' in out


def test_unknown_peak_shows_no_mfu(monkeypatch, capsys):
    """A device whose peak FLOP/s is unknown (a GPU missing from gpu_peak_flops.csv, MPS) is timed all the
    same: MFU is null in the JSON and '-' in the report."""
    monkeypatch.setattr(bench.flops, 'peak_flops', lambda device, dtype: None)
    result = bench.main(TINY + ['--synthetic=True', '--vocab_size=64', '--json=True', '--generate_tokens=0'])
    assert result['train']['mfu'] is None and result['train']['peak_tflops'] is None
    assert result['train']['tokens_per_s'] > 0
    assert 'MFU - (unknown for ' in capsys.readouterr().err


def test_cpu_defaults():
    cpu = machine.Machine(device='cpu', dtype='float32', compile=False)
    cfg = bench.resolve(Config(bench.DEFAULTS), cpu)
    assert (cfg['batch_size'], cfg['block_size'], cfg['steps'], cfg['warmup']) == (1, 256, 10, 2)
    assert (cfg['n_layer'], cfg['n_embd']) == (12, 768)  # GPT-2 124M
    given = bench.resolve(Config(dict(bench.DEFAULTS, batch_size=64, steps=5)), cpu)
    assert (given['batch_size'], given['steps'], given['block_size']) == (64, 5, 256)


@pytest.mark.parametrize('arg, message', [
    ('--steps=0', 'steps=0 must be at least 1'),
    ('--generate_tokens=1', 'generate_tokens=1 must be at least 2'),
    ('--prompt_tokens=33', 'prompt_tokens=33 is longer than the context'),
    ('--peak_flops=-1', 'peak_flops=-1.0 must be positive'),
])
def test_bad_input(arg, message):
    with pytest.raises(ValueError, match=message):
        bench.main(TINY + ['--synthetic=True', '--vocab_size=64', arg])


def test_cli_error_is_one_line():
    proc = run('bench.py', '--steps=0', '--device=cpu')
    assert proc.returncode == 1 and proc.stderr.strip() == 'error: steps=0 must be at least 1'


def test_profile_without_generation(tmp_path):
    result = bench.main(TINY + ['--synthetic=True', '--vocab_size=64', '--profile=True', '--generate_tokens=0',
                                f'--out_dir={tmp_path}'])
    assert 'generate' not in result
    with open(result['profile_trace']) as f:
        assert json.load(f)['traceEvents']


def test_recompute_baseline_matches_sample_py(tmp_path, capsys):
    """benchmarks/sample_recompute.py (nanoGPT's loop, no cache) on a checkpoint as generate_speed.py writes it
    gives sample.py's greedy text within the context (block 16: the 5-character prompt and 11 new tokens).
    Past it the two differ by design: nanoGPT slides a block_size window, the cache re-reads its last half."""
    _, config = generate_speed.make_model('mini', tmp_path)  # writes the 65-character meta.pkl
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65))
    generate_speed.save_random_checkpoint(model, config, tmp_path)
    argv = [f'--out_dir={tmp_path}', '--num_samples=2', '--max_new_tokens=11', '--temperature=0', '--start=To be',
            '--device=cpu', '--dtype=float32']
    cached = sample.main(argv)
    recomputed = sample_recompute.main(argv)
    assert recomputed == cached and len(cached[0]) == len('To be') + 11
    assert '\n---------------\n' in capsys.readouterr().out  # sample.py's separator after each sample
    (tmp_path / 'prompt.txt').write_text('To be')
    from_file = [a if not a.startswith('--start=') else f'--start=FILE:{tmp_path / "prompt.txt"}' for a in argv]
    assert sample_recompute.main(from_file) == cached  # a prompt file, read as sample.py reads it


def test_generate_speed_in_process():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65))
    rates = generate_speed.in_process(model, {'runs': 2, 'new_tokens': 20})
    assert len(rates['cache']) == len(rates['recompute']) == 2 and min(rates['cache'] + rates['recompute']) > 0
