"""
Open models (Llama, Qwen) against Hugging Face transformers, on random weights written here with save_pretrained:

  load        a Llama-3.2-1B-shaped folder (bf16 model.safetensors, 1,235,814,400 parameters): wall time and peak
              RSS of a fresh process that loads it, checkpoint.load_model (as sample.py) against transformers'
              AutoModelForCausalLM.from_pretrained (its default dtype: the config's, bf16), alternating A B A B
  generate    a SmolLM2-135M-shaped folder (fp32), and a tiny one (2 layers x 64, where per-token overhead, not
              the weights' memory traffic, is the cost): greedy generation with the KV cache, batch 1, the same
              prompt and length, model.generate against transformers' generate, in this process, A B A B

    flock /tmp/timing.lock python benchmarks/open_models.py                      # both, 3 runs each
    flock /tmp/timing.lock python benchmarks/open_models.py --what=generate --shapes=tiny --new_tokens=128

Medians and (min-max). The folders go to a temporary directory, removed at the end (--keep=DIR keeps them).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import checkpoint  # noqa: E402
from configurator import cli, configure  # noqa: E402

DEFAULTS = dict(
    what='load,generate',  # comma-separated: load, generate
    runs=3,  # A B pairs per measurement
    prompt_tokens=16,
    new_tokens=128,
    shapes='tiny,smollm2_135m',  # the generate benchmark's models
    threads=0,  # torch's threads for generate; 0 keeps torch's default (a busy machine stalls multi-threaded kernels)
    keep='',  # a folder to write the random models into and keep; '' uses a temporary one
)
LLAMA_3_2_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                    tie_word_embeddings=True, rope_theta=500000.0,
                    rope_scaling=dict(rope_type='llama3', factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=8192))
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                    tie_word_embeddings=True, rms_norm_eps=1e-5)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
SHAPES = {'tiny': TINY, 'smollm2_135m': SMOLLM2_135M}
# each load runs in a fresh process that prints its time and peak resident memory
LOADERS = {
    'ours': 'import checkpoint; model, _ = checkpoint.load_model(FOLDER)',
    'transformers': 'import transformers; model = transformers.AutoModelForCausalLM.from_pretrained(FOLDER)',
}
LOAD_SCRIPT = '''
import json, resource, sys, time
sys.path.insert(0, {root!r})
FOLDER = {folder!r}
t0 = time.perf_counter()
{load}
dt = time.perf_counter() - t0
params = sum(p.numel() for p in model.parameters())
dtypes = sorted({{str(p.dtype) for p in model.parameters()}})
print(json.dumps(dict(seconds=dt, peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, params=params,
                      dtypes=dtypes)))
'''


def write_random(folder, options, dtype):
    """A random transformers Llama of these options, saved with save_pretrained (built in dtype: no fp32 copy)."""
    import transformers
    if os.path.isfile(os.path.join(folder, 'config.json')):
        return folder
    torch.manual_seed(0)
    config = transformers.LlamaConfig(bos_token_id=None, eos_token_id=None, **options)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = transformers.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(folder)
    return folder


def spread(values):
    return f'{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})'


def bench_load(folder, runs):
    results = {name: [] for name in LOADERS}
    for _ in range(runs):
        for name, load in LOADERS.items():
            script = LOAD_SCRIPT.format(root=ROOT, folder=folder, load=load)
            out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, cwd=ROOT)
            if out.returncode:
                raise RuntimeError(f'{name} failed: {out.stderr[-2000:]}')
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for name, rows in results.items():
        print(f"load {name:12s}: {spread([r['seconds'] for r in rows])} s, peak RSS "
              f"{spread([r['peak_rss'] / 2 ** 30 for r in rows])} GiB, {rows[0]['params']:,} parameters "
              f"{rows[0]['dtypes']}")
    return results


@torch.no_grad()
def bench_generate(folder, runs, prompt_tokens, new_tokens):
    import transformers
    ours, _ = checkpoint.load_model(folder)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = torch.randint(0, ours.config.vocab_size, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    generators = {
        'ours': lambda: ours.generate(prompt, new_tokens, temperature=0),
        'transformers': lambda: theirs.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                do_sample=False),
    }
    outputs = {name: generate() for name, generate in generators.items()}  # a warm-up each
    same = torch.equal(outputs['ours'], outputs['transformers'])
    rates = {name: [] for name in generators}
    for _ in range(runs):
        for name, generate in generators.items():
            t0 = time.perf_counter()
            generate()
            rates[name].append(new_tokens / (time.perf_counter() - t0))
    shape = os.path.basename(folder)
    for name, values in rates.items():
        print(f'generate {shape} {name:12s}: {spread(values)} tokens/s')
    ratio = statistics.median(rates['ours']) / statistics.median(rates['transformers'])
    print(f'generate {shape}: ours / transformers = {ratio:.2f}x (median of each); the same tokens: {same}')
    return rates


def main():
    cfg = configure(DEFAULTS, sys.argv[1:])
    what = cfg['what'].split(',')
    if cfg['threads']:
        torch.set_num_threads(cfg['threads'])
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability '
          f'{torch.backends.cpu.get_cpu_capability()}')
    with tempfile.TemporaryDirectory() as tmp:
        where = cfg['keep'] or tmp
        if 'load' in what:
            bench_load(write_random(os.path.join(where, 'llama3_2_1b'), LLAMA_3_2_1B, torch.bfloat16), cfg['runs'])
        for shape in cfg['shapes'].split(',') if 'generate' in what else ():
            folder = write_random(os.path.join(where, shape), SHAPES[shape], torch.float32)
            bench_generate(folder, cfg['runs'], cfg['prompt_tokens'], cfg['new_tokens'])


if __name__ == '__main__':
    cli(main)
