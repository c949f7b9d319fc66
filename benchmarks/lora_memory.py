"""
Peak memory (RSS) and seconds per step of finetuning a model preset on this machine, LoRA or full, against
sizing.py's prediction for the same run. Random weights (nothing downloaded), batch 1 at the preset's block_size,
bf16 autocast; each step is training.train_step's: forward, backward, clip the gradients, AdamW step (the model's
fused AdamW over the parameters that train), zero_grad. LoRA: lora.add_adapters on every target, the frozen base in
bf16 (lora_base_dtype=bfloat16), as train.py --lora_rank builds it.

    flock /tmp/timing.lock python benchmarks/lora_memory.py config/model_gpt2_xl.py --lora_rank=8
    flock /tmp/timing.lock python benchmarks/lora_memory.py config/model_gpt2_xl.py --n_layer=4   # full finetuning

Memory: each step's peak resident set (VmHWM, reset before the step through /proc/self/clear_refs), less the
resident set of the process before the model is built (Python, torch, their libraries and the kernels a step of a
tiny model loads), against sizing's total
(weights, optimizer state, activations). The first step also allocates AdamW's state; the others are the steady
state (median and range printed). The script ends itself when its resident set passes --max_gb: the machine is
shared. Linux only.
"""

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import fields

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import lora  # noqa: E402
from configurator import cli, configure  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

MODEL_KEYS = [f.name for f in fields(GPTConfig)]
DEFAULTS = dict({f.name: f.default for f in fields(GPTConfig)}, lora_rank=0, lora_alpha=16.0, steps=4, max_gb=8.0,
                learning_rate=1e-4, grad_clip=1.0)


def rss_bytes(field='VmRSS'):
    """This process's resident set now (VmRSS) or at its peak since the last reset (VmHWM), in bytes."""
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ':'))


def reset_peak():
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM to the current resident set


def guard(max_bytes):
    """End the process (exit code 3) as soon as its resident set passes max_bytes."""
    def watch():
        while True:
            if rss_bytes() > max_bytes:
                print(f'stopped: the resident set passed --max_gb={max_bytes / 1e9:g}', flush=True)
                os._exit(3)
            time.sleep(0.02)
    threading.Thread(target=watch, daemon=True).start()


def random_model(config, cfg):
    """The model with random weights in the dtypes of the run, built on the meta device and materialized once
    (a float32 GPT-2 XL built first would need 6 GB): with LoRA, the blocks' matrices in bf16 and float32 adapters."""
    with torch.device('meta'):
        model = GPT(config)
        if cfg['lora_rank']:
            lora.add_adapters(model, cfg['lora_rank'], cfg['lora_alpha'], 0.0, lora.TARGETS, torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for name, t in model.state_dict().items():
        if name.endswith('lora_B'):
            weights[name] = torch.zeros(t.shape, dtype=t.dtype)  # as add_adapters starts it
        elif t.dim() >= 2:
            weights[name] = (torch.randn(t.shape, generator=generator) * 0.02).to(t.dtype)
        else:
            weights[name] = (torch.ones if name.endswith('ln_1.weight') or name.endswith('ln_2.weight')
                             or name.endswith('ln_f.weight') else torch.zeros)(t.shape, dtype=t.dtype)
    if config.tie_embeddings:
        weights['lm_head.weight'] = weights['transformer.wte.weight']  # one tensor, as in the model
    model.load_state_dict(weights, assign=True)
    return model.train()


def predicted(argv, lora_rank):
    """sizing.py's memory prediction (bytes) for this run, from its --json report."""
    ours = [a for a in argv if a.startswith('--') and a[2:].split('=')[0] not in MODEL_KEYS + ['lora_rank', 'lora_alpha']]
    sizing_argv = [a for a in argv if a not in ours] + ['--batch_size=1', '--device_memory=24GB', '--json']
    if lora_rank:
        sizing_argv.append('--lora_base_dtype=bfloat16')
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'sizing.py'), *sizing_argv], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    memory = json.loads(out)['memory']
    if lora_rank:
        return memory['lora']['total']
    return next(t['total'] for t in memory['training'] if t['variant'] == 'mixed precision (bf16 autocast)')


def warm_up():
    """A step of a tiny model: the kernels' code and allocator pools that any step loads are then in the baseline."""
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=32, vocab_size=64))
    x = torch.randint(0, 64, (1, 32))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        model(x, x)[1].backward()


def main():
    argv = sys.argv[1:]
    cfg = configure(DEFAULTS, argv)
    guard(cfg['max_gb'] * 1e9)
    config = GPTConfig(**{k: cfg[k] for k in MODEL_KEYS})
    warm_up()
    baseline = rss_bytes()
    model = random_model(config, cfg)
    built = rss_bytes()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = model.configure_optimizers(0.1, cfg['learning_rate'], (0.9, 0.95), 'cpu')
    x = torch.randint(0, config.vocab_size, (1, config.block_size), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, 1)
    what = f"LoRA rank {cfg['lora_rank']}, bf16 base" if cfg['lora_rank'] else 'full finetuning'
    print(f'{what}: {config.n_layer} layers, n_embd {config.n_embd}, {model.get_num_params(False):,} parameters, '
          f'{sum(p.numel() for p in trainable):,} train; {torch.get_num_threads()} threads')
    print(f'resident: {baseline / 1e9:.2f} GB before the model, {built / 1e9:.2f} GB with it')
    peaks, times = [], []
    for step in range(cfg['steps']):
        reset_peak()
        t0 = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg['grad_clip'])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        peaks.append(rss_bytes('VmHWM'))
        print(f'step {step}: loss {loss.item():.3f}, {times[-1]:.1f} s, peak resident {peaks[-1] / 1e9:.2f} GB', flush=True)
    steady_peaks, steady_times = peaks[1:] or peaks, times[1:] or times
    peak = max(peaks) - baseline
    prediction = predicted(argv, cfg['lora_rank'])
    print(f'seconds per step (steps 1-{len(times) - 1}): median {statistics.median(steady_times):.1f} '
          f'({min(steady_times):.1f}-{max(steady_times):.1f})')
    print(f'peak resident: {max(peaks) / 1e9:.2f} GB; less the {baseline / 1e9:.2f} GB before the model: '
          f'{peak / 1e9:.2f} GB (steady steps {(min(steady_peaks) - baseline) / 1e9:.2f}-'
          f'{(max(steady_peaks) - baseline) / 1e9:.2f} GB)')
    print(f'sizing.py predicts {prediction / 1e9:.2f} GB: measured {100 * (peak - prediction) / prediction:+.1f}%')


if __name__ == '__main__':
    cli(main)
