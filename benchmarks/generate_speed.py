"""
Generation speed with the key/value cache (model.generate, as sample.py runs it) against nanoGPT's full
recomputation for every token (benchmarks/sample_recompute.py), on random weights, batch 1, 500 new
tokens from a one-token prompt, sample.py's sampling (temperature 0.8, top_k 200):

  baby   the baby GPT of config/train_shakespeare_char.py: 6 layers x 384, block 256, 65 characters
  gpt2   GPT-2 124M: 12 layers x 768, block 1024, GPT-2's BPE (50257 tokens)
  mini   the small CPU recipe, 4 layers x 128, block 64 (whole process only: nanoGPT's 5 x 500 reference)

    flock /tmp/cpu.lock python benchmarks/generate_speed.py --models=baby --runs=3
    flock /tmp/cpu.lock python benchmarks/generate_speed.py --models=gpt2 --runs=1 --whole_process=False

In-process: tokens/s of the generation call alone (eval mode, float32), cached then recomputed, repeated
--runs times (A B A B ...). Whole process (--whole_process): the wall time of `python sample.py
--init_from=resume --out_dir=... --num_samples=1 --max_new_tokens=500` against the same command of
sample_recompute.py, on a checkpoint of the same random weights, also alternating. Medians and (min-max).
"""

import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import checkpoint
from configurator import cli, configure
from model import GPT, GPTConfig, sample_next
from training import DEFAULTS as TRAIN_DEFAULTS, TYPES_OF_NONE

DEFAULTS = dict(
    models='baby,gpt2',  # comma-separated, from baby, gpt2, mini
    runs=3,  # A B pairs per measurement
    new_tokens=500,
    in_process=True,
    whole_process=True,
    seed=1337,
)
MODELS = ('baby', 'gpt2', 'mini')
# Tiny Shakespeare's 65 characters: the vocabulary of data/shakespeare_char
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SAMPLING = dict(temperature=0.8, top_k=200)  # sample.py's defaults


def make_model(name, tmp):
    """(model with random weights, the checkpoint's config: where its tokenizer lives)."""
    if name == 'gpt2':
        return GPT(GPTConfig(vocab_size=50257)), {'dataset': 'openwebtext'}  # no meta.pkl: GPT-2 BPE
    data_dir = os.path.join(tmp, 'data')
    os.makedirs(data_dir, exist_ok=True)
    meta = {'vocab_size': len(SHAKESPEARE_CHARS), 'dtype': 'uint16', 'tokenizer': 'char',
            'stoi': {c: i for i, c in enumerate(SHAKESPEARE_CHARS)}, 'itos': dict(enumerate(SHAKESPEARE_CHARS))}
    with open(os.path.join(data_dir, 'meta.pkl'), 'wb') as f:
        pickle.dump(meta, f)
    argv = [os.path.join(ROOT, 'config', 'train_shakespeare_char.py')]
    if name == 'mini':  # nanoGPT's README recipe for a CPU
        argv += ['--n_layer=4', '--n_head=4', '--n_embd=128', '--block_size=64', '--dropout=0.0']
    cfg = configure(TRAIN_DEFAULTS, argv, TYPES_OF_NONE)
    model, _ = checkpoint.init_model(cfg, meta, None)  # as train.py builds it
    return model, {'dataset': cfg['dataset'], 'data_dir': data_dir}


def save_random_checkpoint(model, config, out_dir):
    checkpoint.save({'model': model.state_dict(), 'model_args': checkpoint.model_args(model.config), 'config': config,
                     'iter_num': 0, 'best_val_loss': 0.0}, os.path.join(out_dir, 'ckpt.pt'))


@torch.no_grad()
def generate_recompute(model, idx, max_new_tokens, **sampling):
    """nanoGPT's loop, as benchmarks/sample_recompute.py runs it: the last block_size tokens through the model
    for every new one."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat((idx, sample_next(logits[:, -1, :], **sampling)), dim=1)
    return idx


def in_process(model, cfg):
    """Tokens/s of model.generate (cached) and of generate_recompute, alternating, runs times each."""
    model.eval()
    idx = torch.zeros((1, 1), dtype=torch.long)  # a one-token prompt
    model.generate(idx, 8, **SAMPLING)  # warm up
    generators = {'cache': model.generate, 'recompute': lambda *args, **kw: generate_recompute(model, *args, **kw)}
    rates = {what: [] for what in generators}
    for run in range(cfg['runs']):
        for what, generate in generators.items():
            t0 = time.perf_counter()
            out = generate(idx, cfg['new_tokens'], **SAMPLING)
            rates[what].append(cfg['new_tokens'] / (time.perf_counter() - t0))
            assert out.shape == (1, 1 + cfg['new_tokens']), out.shape
        print(f"  run {run + 1}: cache {rates['cache'][-1]:.1f} tokens/s, "
              f"recompute {rates['recompute'][-1]:.1f} tokens/s", file=sys.stderr)
    return rates


def whole_process(out_dir, cfg, num_samples=1):
    """Wall seconds of sample.py and of sample_recompute.py on out_dir's checkpoint, alternating."""
    def command(script, new_tokens):
        return [sys.executable, script, f'--out_dir={out_dir}', f'--num_samples={num_samples}',
                f'--max_new_tokens={new_tokens}', '--start=\n']
    scripts = {'sample.py': os.path.join(ROOT, 'sample.py'), 'recompute': os.path.join(HERE, 'sample_recompute.py')}
    env = dict(os.environ)
    shared_cache = os.path.join(os.path.dirname(ROOT), 'shared', 'tiktoken_cache')  # offline machines: ../shared
    if os.path.isdir(shared_cache):
        env.setdefault('TIKTOKEN_CACHE_DIR', shared_cache)
    for script in scripts.values():  # warm the file cache (python, torch) for both
        subprocess.run(command(script, 1), check=True, capture_output=True, cwd=ROOT, env=env)
    seconds = {what: [] for what in scripts}
    for run in range(cfg['runs']):
        for what, script in scripts.items():
            t0 = time.perf_counter()
            proc = subprocess.run(command(script, cfg['new_tokens']), capture_output=True, text=True, cwd=ROOT, env=env)
            seconds[what].append(time.perf_counter() - t0)
            if proc.returncode:
                raise ValueError(f'{script} failed: {proc.stderr.strip()[-500:]}')
        print(f"  run {run + 1}: sample.py {seconds['sample.py'][-1]:.2f} s, "
              f"recompute {seconds['recompute'][-1]:.2f} s", file=sys.stderr)
    return seconds


def summary(values, digits=1):
    return f'{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})'


def main():
    cfg = configure(DEFAULTS, sys.argv[1:])
    for key in ('runs', 'new_tokens'):
        if cfg[key] < 1:
            raise ValueError(f'{key}={cfg[key]} must be at least 1')
    unknown = [name for name in cfg['models'].split(',') if name not in MODELS]
    if unknown:
        raise ValueError(f"unknown model {', '.join(map(repr, unknown))}: choose among {', '.join(MODELS)}")
    torch.set_grad_enabled(False)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, float32, '
          f"{cfg['new_tokens']} new tokens from a one-token prompt, {cfg['runs']} runs each")
    for name in cfg['models'].split(','):
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(cfg['seed'])
            model, config = make_model(name, tmp)
            print(f'{name}: {model.get_num_params() / 1e6:.2f}M parameters, {model.config.n_layer} layers x '
                  f'{model.config.n_embd}, block {model.config.block_size}, vocab {model.config.vocab_size}')
            if cfg['in_process'] and name != 'mini':
                rates = in_process(model, cfg)
                speedups = [a / b for a, b in zip(rates['cache'], rates['recompute'])]
                print(f"  in-process tokens/s: cache {summary(rates['cache'])}, "
                      f"recompute {summary(rates['recompute'])}, "
                      f'speedup {summary(speedups)}x')
            if cfg['whole_process']:
                save_random_checkpoint(model, config, tmp)
                num_samples = 5 if name == 'mini' else 1  # nanoGPT's reference: 5 x 500 tokens, 6.6 s
                seconds = whole_process(tmp, cfg, num_samples)
                speedups = [b / a for a, b in zip(seconds['sample.py'], seconds['recompute'])]
                print(f"  whole process, {num_samples} x {cfg['new_tokens']} tokens, seconds: "
                      f"sample.py {summary(seconds['sample.py'], 2)}, recompute {summary(seconds['recompute'], 2)}, "
                      f'speedup {summary(speedups)}x')


if __name__ == '__main__':
    cli(main)
