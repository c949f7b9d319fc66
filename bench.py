"""
How fast a GPT trains and generates on the machine at hand. Training: ms per step (forward, backward,
optimizer step, as train.py does it), tokens/s, achieved TFLOP/s and MFU; generation: prefill time and
decode tokens/s with the key/value cache, as sample.py generates.

    python bench.py                                          # GPT-2 124M; on a CPU a short run (see below)
    python bench.py --dtype=bfloat16 --compile=True          # GPT-2 124M, batch 12 x 1024, on a GPU
    python bench.py config/train_shakespeare_char.py --device=cpu --steps=5
    python bench.py --synthetic=False --dataset=openwebtext  # read batches from data/openwebtext/*.bin
    python bench.py --json=True > bench.json                 # one JSON object on stdout, the report on stderr
    python bench.py --profile=True                           # also a torch profiler trace: out_dir/bench_trace.json

Every train.py config file and key works (`python bench.py --help` lists them), plus the keys of
BENCH_DEFAULTS below. Left at None, the sizes follow the device: on a GPU GPT-2 124M's batch_size 12
x block_size 1024, 30 timed steps after 10 warm-up steps, 500 generated tokens; on a CPU batch_size 1
x block_size 256, 10 steps after 2, 100 tokens, which takes under a minute on 2 cores. A resumed or
pretrained model (init_from) keeps its own context unless block_size is given.
"""

import json
import os
import statistics
import sys
import time
from dataclasses import fields

import torch

import common
import sample
import train
from configurator import configure
from model import GPTConfig, device_peak_flops

BENCH_DEFAULTS = dict(
    steps=None,  # timed training steps; median and spread over them
    warmup=None,  # untimed steps first (allocation, torch.compile)
    synthetic=None,  # random tokens instead of the dataset's bins; None: random tokens when the bins are missing
    profile=False,  # also profile 3 more steps with torch.profiler: a Chrome trace and a table of the top ops
    json=False,  # print one JSON object on stdout (the report goes to stderr)
    peak_flops=0.0,  # the device's peak FLOP/s for MFU; 0: model.py's table for GPUs, a measured matmul on CPUs
    prompt_tokens=64,  # prompt length for the prefill
    generate_tokens=None,  # new tokens per generation run (0 skips generation)
)
DEFAULTS = dict(
    train.DEFAULTS,
    gradient_accumulation_steps=1,  # micro-steps per timed step (train.py's default is 40)
    batch_size=None,
    block_size=None,
    **BENCH_DEFAULTS,
)
TYPES_OF_NONE = dict(train.TYPES_OF_NONE, batch_size=int, block_size=int, steps=int, warmup=int, synthetic=bool,
                     generate_tokens=int)
# what None means, by device: GPT-2 124M's training shape on a GPU; a run of under a minute on a CPU
AUTO = {
    'gpu': dict(batch_size=12, block_size=1024, steps=30, warmup=10, generate_tokens=500),
    'cpu': dict(batch_size=1, block_size=256, steps=10, warmup=2, generate_tokens=100),
}
GENERATE_RUNS = 3  # timed generation runs, after one short warm-up run


def resolve(cfg):
    """Fill in the device-dependent defaults and check the bench keys (train.py checks its own)."""
    cfg['device'] = common.resolve_device(cfg['device'])
    auto = AUTO['gpu' if cfg['device'].startswith('cuda') else 'cpu']
    if cfg['block_size'] is None and cfg['init_from'] != 'scratch':
        auto = dict(auto, block_size=train.DEFAULTS['block_size'])  # train.py's default: the model's own context
    for key, value in auto.items():
        if cfg[key] is None:
            cfg[key] = value
    train.resolve_system(cfg, world_size=1)
    for key, least in (('steps', 1), ('warmup', 0), ('prompt_tokens', 1)):
        if cfg[key] < least:
            raise ValueError(f'{key}={cfg[key]} must be at least {least}')
    if cfg['generate_tokens'] < 0 or cfg['generate_tokens'] == 1:
        raise ValueError(f"generate_tokens={cfg['generate_tokens']} must be at least 2 (the first token comes "
                         'out of the prefill), or 0 to skip generation')
    if cfg['peak_flops'] < 0:
        raise ValueError(f"peak_flops={cfg['peak_flops']} must be positive (FLOP/s, e.g. 989e12), or 0 for the table")


class RandomBatches:
    """Random tokens in place of train.Batches (same get()): one fixed batch, so no data loading is timed."""

    def __init__(self, vocab_size, block_size, batch_size, device, seed):
        self.device = device
        xy = torch.randint(vocab_size, (batch_size, block_size + 1), generator=torch.Generator().manual_seed(seed))
        self.x, self.y = xy[:, :-1].to(device), xy[:, 1:].to(device)

    def get(self, split, *key):
        return self.x, self.y


def synchronize(device):
    """Wait for the device's queued work, so that the clock measures it."""
    if device.startswith('cuda'):
        torch.cuda.synchronize(device)
    elif device == 'mps':
        torch.mps.synchronize()


def spread(values):
    """Median, min and max of a list of numbers."""
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values)}


def device_name(device):
    if device.startswith('cuda'):
        return torch.cuda.get_device_name(torch.device(device))
    name = device
    if device == 'cpu':
        try:
            with open('/proc/cpuinfo') as f:
                name = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), 'cpu')
        except OSError:
            name = 'cpu'
        name += f', torch threads {torch.get_num_threads()}'
    return name


def time_training(step, cfg):
    """Seconds per training step (step(iter_num)), for cfg['steps'] steps after cfg['warmup'] untimed ones."""
    seconds = []
    for it in range(cfg['warmup'] + cfg['steps']):
        synchronize(cfg['device'])
        t0 = time.perf_counter()
        loss = step(it)
        synchronize(cfg['device'])
        if it >= cfg['warmup']:
            seconds.append(time.perf_counter() - t0)
    if not torch.isfinite(loss):
        raise ValueError('the training loss became NaN or infinite: lower --learning_rate or use --dtype=bfloat16')
    return seconds


def profile_training(step, cfg, steps=3):
    """Profile a few more steps: a Chrome trace (chrome://tracing, ui.perfetto.dev) and the top ops as a table."""
    from torch.profiler import ProfilerActivity, profile
    cuda = cfg['device'].startswith('cuda')
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for it in range(steps):
            step(it)
        synchronize(cfg['device'])
    path = os.path.join(cfg['out_dir'], 'bench_trace.json')
    os.makedirs(cfg['out_dir'], exist_ok=True)
    prof.export_chrome_trace(path)
    table = prof.key_averages().table(sort_by='self_cuda_time_total' if cuda else 'self_cpu_time_total', row_limit=15)
    return path, table


def time_generation(model, ctx, cfg):
    """Prefill seconds and decode tokens/s of model.generate (batch 1, the KV cache, sample.py's sampling
    settings), per run. The first token comes out of the prefill; each later one costs one decode step, so
    the times at which on_token sees the tokens split the two."""
    vocab_size = model.config.vocab_size
    g = torch.Generator().manual_seed(cfg['seed'])
    prefill, decode = [], []
    for run in range(GENERATE_RUNS + 1):  # run 0 warms up, briefly
        n = 2 if run == 0 else cfg['generate_tokens']
        prompt = torch.randint(vocab_size, (1, cfg['prompt_tokens']), generator=g).to(cfg['device'])
        times = []

        def on_token(tokens):
            synchronize(cfg['device'])  # as a streaming caller would, to print the token
            times.append(time.perf_counter())

        synchronize(cfg['device'])
        t0 = time.perf_counter()
        with ctx:
            model.generate(prompt, n, temperature=sample.DEFAULTS['temperature'], top_k=sample.DEFAULTS['top_k'],
                           top_p=sample.DEFAULTS['top_p'], on_token=on_token)
        if run > 0:
            prefill.append(times[0] - t0)
            decode.append((n - 1) / (times[-1] - times[0]))
    return prefill, decode


def build(cfg):
    """(model on the device, batches, data_dir) as train.py builds them; random tokens when cfg['synthetic']."""
    data_dir = cfg['data_dir'] or os.path.join('data', cfg['dataset'])
    if cfg['synthetic'] is None:
        cfg['synthetic'] = not os.path.exists(os.path.join(data_dir, 'train.bin'))
    if not cfg['synthetic']:
        data_dir = train.ensure_data(cfg, master_process=True)
    meta = common.load_meta(data_dir)  # the dataset's vocabulary, for real and random tokens alike
    model, _ = train.build_model(cfg, data_dir, meta)  # sets cfg['block_size'] to the model's
    if cfg['prompt_tokens'] > cfg['block_size']:
        raise ValueError(f"prompt_tokens={cfg['prompt_tokens']} is longer than the context, "
                         f"block_size={cfg['block_size']}")
    device, block_size, batch_size = cfg['device'], cfg['block_size'], cfg['batch_size']
    model.to(device)
    if cfg['synthetic']:
        batches = RandomBatches(model.config.vocab_size, block_size, batch_size, device, cfg['seed'])
    else:
        batches = train.Batches(data_dir, block_size, batch_size, device, cfg['seed'], rank=0)
    return model, batches, data_dir


def report(text, cfg):
    """The human-readable report: on stdout, or on stderr when stdout carries the JSON."""
    print(text, file=sys.stderr if cfg['json'] else sys.stdout, flush=True)


def bench(cfg):
    """Run the benchmark cfg describes (resolved in place); returns the results as a dict."""
    resolve(cfg)
    device, dtype = cfg['device'], cfg['dtype']
    torch.manual_seed(cfg['seed'])
    if device.startswith('cuda'):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ctx = common.autocast(device, dtype)

    model, batches, data_dir = build(cfg)
    scaler = torch.amp.GradScaler(device.split(':')[0], enabled=dtype == 'float16')
    optimizer = model.configure_optimizers(cfg['weight_decay'], cfg['learning_rate'], (cfg['beta1'], cfg['beta2']),
                                           device.split(':')[0])
    if cfg['peak_flops']:
        peak_flops, peak_source = cfg['peak_flops'], '--peak_flops'
    else:  # measured here on a CPU, before the timed steps
        peak_flops = device_peak_flops(device, common.DTYPES[dtype])
        peak_source = 'model.py table' if device.startswith('cuda') else f'measured {dtype} matmul'
    model_args = {f.name: getattr(model.config, f.name) for f in fields(GPTConfig)}
    result = {
        'device': device, 'device_name': device_name(device), 'torch': torch.__version__, 'dtype': dtype,
        'compile': cfg['compile'], 'data': 'synthetic' if cfg['synthetic'] else data_dir,
        'params': model.get_num_params(), 'model_args': model_args, 'config': dict(cfg),
    }
    report(f"{result['params'] / 1e6:.2f}M parameters ({model.config.n_layer} layers, n_embd {model.config.n_embd}, "
           f"vocab {model.config.vocab_size}); {device} ({result['device_name']}), torch {torch.__version__}, "
           f"{dtype}, compile {cfg['compile']}, {'random tokens' if cfg['synthetic'] else 'data ' + data_dir}\n"
           'config: ' + ', '.join(f'{k}={v!r}' for k, v in cfg.items()), cfg)

    train_model = torch.compile(model) if cfg['compile'] else model

    def step(iter_num):
        return train.train_step(train_model, optimizer, scaler, batches, ctx, iter_num,
                                cfg['gradient_accumulation_steps'], cfg['grad_clip'])

    seconds = time_training(step, cfg)
    T, accum = cfg['block_size'], cfg['gradient_accumulation_steps']
    tokens_per_iter = accum * cfg['batch_size'] * T
    dt = statistics.median(seconds)
    flops_per_token = model.flops_per_token(T)
    result['train'] = {
        'steps': cfg['steps'], 'warmup': cfg['warmup'], 'tokens_per_iter': tokens_per_iter,
        'ms_per_iter': {k: v * 1000 for k, v in spread(seconds).items()},
        'tokens_per_s': tokens_per_iter / dt,
        'flops_per_token': flops_per_token,
        'tflops': flops_per_token * tokens_per_iter / dt / 1e12,
        'mfu': model.estimate_mfu(accum * cfg['batch_size'], dt, T, peak_flops=peak_flops),
        'peak_tflops': peak_flops / 1e12, 'peak_source': peak_source,
    }
    r = result['train']
    ms = r['ms_per_iter']
    report(f"train: {cfg['steps']} steps of {tokens_per_iter:,} tokens (gradient_accumulation_steps {accum} x "
           f"batch_size {cfg['batch_size']} x block_size {T}), after {cfg['warmup']} warm-up steps\n"
           f"  {ms['median']:.1f} ms/iter median ({ms['min']:.1f}-{ms['max']:.1f}), {r['tokens_per_s']:,.0f} tokens/s, "
           f"{r['tflops']:.3g} TFLOP/s ({flops_per_token / 1e6:,.0f} MFLOP per token), MFU {r['mfu'] * 100:.1f}% "
           f"of {r['peak_tflops']:.3g} TFLOP/s ({peak_source})", cfg)
    if r['mfu'] > 1:
        report('warning: MFU above 100%: the peak is too low (on a CPU, something else ran while it was measured); '
               'run again, or pass --peak_flops', cfg)

    if cfg['profile']:
        path, table = profile_training(step, cfg)
        result['profile_trace'] = path
        report(f'{table}\nprofile: Chrome trace of 3 steps in {path}', cfg)

    if cfg['generate_tokens']:
        prefill, decode = time_generation(model, ctx, cfg)
        result['generate'] = {
            'batch_size': 1, 'prompt_tokens': cfg['prompt_tokens'], 'new_tokens': cfg['generate_tokens'],
            'runs': GENERATE_RUNS, 'kv_cache': True, 'compile': False,
            'temperature': sample.DEFAULTS['temperature'], 'top_k': sample.DEFAULTS['top_k'],
            'prefill_ms': {k: v * 1000 for k, v in spread(prefill).items()},
            'decode_tokens_per_s': spread(decode),
        }
        p, d = result['generate']['prefill_ms'], result['generate']['decode_tokens_per_s']
        report(f"generate: batch 1, a {cfg['prompt_tokens']}-token prompt, {cfg['generate_tokens']} new tokens, "
               f'KV cache, eager, {GENERATE_RUNS} runs\n'
               f"  prefill {p['median']:.1f} ms median ({p['min']:.1f}-{p['max']:.1f}), "
               f"decode {d['median']:,.1f} tokens/s median ({d['min']:,.1f}-{d['max']:,.1f})", cfg)
    if cfg['json']:
        print(json.dumps(result))
    return result


def main(argv=None):
    cfg = configure(DEFAULTS, sys.argv[1:] if argv is None else argv, TYPES_OF_NONE)
    return bench(cfg)


if __name__ == '__main__':
    common.cli(main)
