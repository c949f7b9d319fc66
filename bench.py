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

Every train.py config file and key works (`python bench.py --help` lists them; train.py's peak_flops
sets the peak that MFU is measured against, 0 for machine.py's), plus the keys of BENCH_DEFAULTS below. Left at None, the sizes follow the device: on a GPU GPT-2 124M's batch_size 12
x block_size 1024, 30 timed steps after 10 warm-up steps, 500 generated tokens; on a CPU batch_size 1
x block_size 256, 10 steps after 2, 100 tokens, which takes under a minute on 2 cores. A resumed or
pretrained model (init_from) keeps its own context unless block_size is given. One process: not
under torchrun.
"""

import json
import os
import statistics
import sys
import time

import torch

import checkpoint
import dataset
import flops
import machine as machines
import sampling
from configurator import cli, configure
from training import DEFAULTS as TRAIN_DEFAULTS, TYPES_OF_NONE as TRAIN_TYPES_OF_NONE
from training import configure_optimizer, setting_problems, tokens_per_iter, train_step

BENCH_DEFAULTS = dict(
    steps=None,  # timed training steps; median and spread over them
    warmup=None,  # untimed steps first (allocation, torch.compile)
    synthetic=None,  # random tokens instead of the dataset's bins; None: random tokens when the bins are missing
    profile=False,  # also profile 3 more steps with torch.profiler: a Chrome trace and a table of the top ops
    json=False,  # print one JSON object on stdout (the report goes to stderr)
    prompt_tokens=64,  # prompt length for the prefill
    generate_tokens=None,  # new tokens per generation run (0 skips generation)
)
DEFAULTS = dict(
    TRAIN_DEFAULTS,
    gradient_accumulation_steps=1,  # micro-steps per timed step (train.py's default is 40)
    batch_size=None,
    block_size=None,
    **BENCH_DEFAULTS,
)
TYPES_OF_NONE = dict(TRAIN_TYPES_OF_NONE, batch_size=int, block_size=int, steps=int, warmup=int, synthetic=bool,
                     generate_tokens=int)
# what None means, by device: GPT-2 124M's training shape on a GPU; a run of under a minute on a CPU
AUTO = {
    'gpu': dict(batch_size=12, block_size=1024, steps=30, warmup=10, generate_tokens=500),
    'cpu': dict(batch_size=1, block_size=256, steps=10, warmup=2, generate_tokens=100),
}
GENERATE_RUNS = 3  # timed generation runs, after one short warm-up run
SAMPLING = {k: sampling.DEFAULTS[k] for k in ('temperature', 'top_k', 'top_p')}  # decode as sample.py does


def check_settings(cfg):
    """The ranges of the bench keys and of the sizes bench uses, before anything runs (None is decided later,
    by the device)."""
    for key, least in (('steps', 1), ('warmup', 0), ('prompt_tokens', 1), ('batch_size', 1),
                       ('gradient_accumulation_steps', 1)):
        if cfg[key] is not None and cfg[key] < least:
            raise ValueError(f'{key}={cfg[key]} must be at least {least}')
    if cfg['generate_tokens'] is not None and (cfg['generate_tokens'] < 0 or cfg['generate_tokens'] == 1):
        raise ValueError(f"generate_tokens={cfg['generate_tokens']} must be at least 2 (the first token comes "
                         'out of the prefill), or 0 to skip generation')
    # train.py's keys that a timed step reads, in train.py's ranges
    problems = setting_problems(cfg, ('peak_flops', 'seed', 'learning_rate', 'weight_decay', 'grad_clip', 'beta1',
                                      'beta2', 'muon_momentum', 'optimizer'))
    if problems:
        raise ValueError('; '.join(problems))


def resolve(cfg, machine):
    """The benchmark's settings: cfg with the sizes left at None decided for the machine's device, the
    machine's decisions, and synthetic decided (random tokens when the bins are missing)."""
    auto = AUTO['gpu' if machine.device_type == 'cuda' else 'cpu']
    if cfg['init_from'] != 'scratch':
        auto = {k: v for k, v in auto.items() if k != 'block_size'}  # the model's own context, unless given
    data_dir = dataset.folder(cfg['dataset'], cfg['data_dir'])
    synthetic = cfg['synthetic']
    if synthetic is None:
        synthetic = not os.path.exists(os.path.join(data_dir, 'train.bin'))
    return cfg.replace(**{k: v for k, v in auto.items() if cfg[k] is None}, synthetic=synthetic,
                       device=machine.device, dtype=machine.dtype, compile=machine.compile)


class RandomBatches:
    """Random tokens in place of dataset.Batches (the same train_batch and eval_batch): one fixed batch, so
    no data loading is timed."""

    def __init__(self, vocab_size, block_size, batch_size, device, seed):
        xy = torch.randint(vocab_size, (batch_size, block_size + 1), generator=torch.Generator().manual_seed(seed))
        self.x, self.y = xy[:, :-1].to(device), xy[:, 1:].to(device)

    def train_batch(self, iter_num, micro_step):
        return self.x, self.y

    def eval_batch(self, split, k):
        return self.x, self.y

    def answer_tokens(self, iter_num, micro_steps):  # every target counts, as in dataset.Batches
        return None


def spread(values):
    """Median, min and max of a list of numbers."""
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values)}


def time_training(step, machine, cfg):
    """Seconds per training step (step(iter_num)), for cfg['steps'] steps after cfg['warmup'] untimed ones."""
    seconds = []
    for it in range(cfg['warmup'] + cfg['steps']):
        machine.synchronize()
        t0 = time.perf_counter()
        loss = step(it)
        machine.synchronize()
        if it >= cfg['warmup']:
            seconds.append(time.perf_counter() - t0)
    if not torch.isfinite(loss):
        raise ValueError('the training loss became NaN or infinite: lower --learning_rate or use --dtype=bfloat16')
    return seconds


def profile_training(step, machine, cfg, steps=3):
    """Profile a few more steps: a Chrome trace (chrome://tracing, ui.perfetto.dev) and the top ops as a table."""
    from torch.profiler import ProfilerActivity, profile
    cuda = machine.device_type == 'cuda'
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for it in range(steps):
            step(it)
        machine.synchronize()
    path = os.path.join(cfg['out_dir'], 'bench_trace.json')
    os.makedirs(cfg['out_dir'], exist_ok=True)
    prof.export_chrome_trace(path)
    table = prof.key_averages().table(sort_by='self_cuda_time_total' if cuda else 'self_cpu_time_total', row_limit=15)
    return path, table


def time_generation(model, machine, cfg):
    """Prefill seconds and decode tokens/s of model.generate (batch 1, the KV cache, sample.py's sampling
    settings), per run. The first token comes out of the prefill; each later one costs one decode step, so
    the times at which on_token sees the tokens split the two."""
    vocab_size = model.config.vocab_size
    g = torch.Generator().manual_seed(cfg['seed'])
    prefill, decode = [], []
    for run in range(GENERATE_RUNS + 1):  # run 0 warms up, briefly
        n = 2 if run == 0 else cfg['generate_tokens']
        prompt = torch.randint(vocab_size, (1, cfg['prompt_tokens']), generator=g).to(machine.device)
        times = []

        def on_token(tokens):
            machine.synchronize()  # as a streaming caller would, to print the token
            times.append(time.perf_counter())

        machine.synchronize()
        t0 = time.perf_counter()
        with machine.autocast():
            model.generate(prompt, n, **SAMPLING, on_token=on_token)
        if run > 0:
            prefill.append(times[0] - t0)
            decode.append((n - 1) / (times[-1] - times[0]))
    return prefill, decode


def build(cfg, machine):
    """(model on the device, batches, data_dir): the model as train.py builds it (checkpoint.init_model),
    batches of the dataset's bins or, when cfg['synthetic'], of random tokens."""
    data_dir = dataset.folder(cfg['dataset'], cfg['data_dir'])
    if not cfg['synthetic'] and not os.path.exists(os.path.join(data_dir, 'train.bin')):
        import corpus  # writes the bins of a built-in dataset (Tiny Shakespeare) the first time
        corpus.prepare_missing(cfg['dataset'], data_dir, machine.master)
    meta = dataset.load_meta(data_dir)  # the dataset's vocabulary, for real and random tokens alike
    model, _ = checkpoint.init_model(cfg, meta, machine)
    block_size, batch_size = model.config.block_size, cfg['batch_size']
    if cfg['prompt_tokens'] > block_size:
        raise ValueError(f"prompt_tokens={cfg['prompt_tokens']} is longer than the context, block_size={block_size}")
    model.to(machine.device)
    if cfg['synthetic']:
        batches = RandomBatches(model.config.vocab_size, block_size, batch_size, machine.device, cfg['seed'])
    else:
        batches = dataset.batches(data_dir, meta, block_size, batch_size, machine.device, cfg['seed'],
                                  model.config.vocab_size)
    return model, batches, data_dir


def report(text, cfg):
    """The human-readable report: on stdout, or on stderr when stdout carries the JSON."""
    print(text, file=sys.stderr if cfg['json'] else sys.stdout, flush=True)


def peak(cfg, machine):
    """(peak FLOP/s or None when unknown, where it comes from); measured here on a CPU, before the timed steps."""
    if cfg['peak_flops']:
        return cfg['peak_flops'], '--peak_flops'
    peak_flops = machine.peak_flops
    if peak_flops is None:
        return None, f'unknown for {machines.device_name(machine.device)}: pass --peak_flops'
    in_table = machine.device_type == 'cuda' and flops.gpu_table_peak(machines.device_name(machine.device))
    return peak_flops, 'gpu_peak_flops.csv' if in_table else f'measured {machine.dtype} matmul'


def bench(cfg, machine):
    """Run the benchmark that cfg (resolved: see resolve) describes on the machine; returns the results as a dict."""
    torch.manual_seed(cfg['seed'])
    model, batches, data_dir = build(cfg, machine)
    cfg = cfg.replace(**checkpoint.model_args(model.config, full=True))  # the model's real architecture
    scaler = torch.amp.GradScaler(machine.device_type, enabled=machine.dtype == 'float16')
    optimizer = configure_optimizer(model, cfg, machine)
    result = {
        'device': machine.device, 'device_name': machines.device_name(machine.device), 'torch': torch.__version__,
        'dtype': machine.dtype, 'compile': machine.compile, 'data': 'synthetic' if cfg['synthetic'] else data_dir,
        'params': model.get_num_params(), 'model_args': checkpoint.model_args(model.config, full=True),
        'config': dict(cfg),
    }
    report(f"{result['params'] / 1e6:.2f}M parameters ({model.config.n_layer} layers, n_embd {model.config.n_embd}, "
           f"vocab {model.config.vocab_size}); {machine.device} ({result['device_name']}), torch {torch.__version__}, "
           f"{machine.dtype}, compile {machine.compile}, {'random tokens' if cfg['synthetic'] else 'data ' + data_dir}\n"
           'config: ' + ', '.join(f'{k}={v!r}' for k, v in cfg.items()), cfg)

    train_model = torch.compile(model) if machine.compile else model

    def step(iter_num):
        return train_step(train_model, optimizer, scaler, batches, iter_num, cfg, machine)[0]  # the loss

    result['train'] = measure_training(model, step, machine, cfg)
    result['memory'] = machine.peak_memory()  # after training: the model, its optimizer state and a step's activations
    report(machine.peak_memory_text() or 'peak memory unknown here', cfg)
    if cfg['profile']:
        path, table = profile_training(step, machine, cfg)
        result['profile_trace'] = path
        report(f'{table}\nprofile: Chrome trace of 3 steps in {path}', cfg)

    if cfg['generate_tokens']:
        result['generate'] = measure_generation(model, machine, cfg)
    if cfg['json']:
        print(json.dumps(result))
    return result


def measure_training(model, step, machine, cfg):
    """Time cfg['steps'] training steps; the result's 'train' entry, reported as it is measured."""
    peak_flops, peak_source = peak(cfg, machine)
    seconds = time_training(step, machine, cfg)
    T, accum = cfg['block_size'], cfg['gradient_accumulation_steps']
    tokens = tokens_per_iter(cfg)
    dt = statistics.median(seconds)
    flops_per_token = model.flops_per_token(T)
    r = {
        'steps': cfg['steps'], 'warmup': cfg['warmup'], 'tokens_per_iter': tokens,
        'ms_per_iter': {k: v * 1000 for k, v in spread(seconds).items()},
        'tokens_per_s': tokens / dt,
        'flops_per_token': flops_per_token,
        'tflops': flops_per_token * tokens / dt / 1e12,
        'mfu': model.estimate_mfu(accum * cfg['batch_size'], dt, peak_flops, T) if peak_flops else None,
        'peak_tflops': peak_flops / 1e12 if peak_flops else None, 'peak_source': peak_source,
    }
    ms = r['ms_per_iter']
    mfu = f"MFU {r['mfu'] * 100:.1f}% of {r['peak_tflops']:.3g} TFLOP/s" if peak_flops else 'MFU -'
    report(f"train: {cfg['steps']} steps of {tokens:,} tokens (gradient_accumulation_steps {accum} x "
           f"batch_size {cfg['batch_size']} x block_size {T}), after {cfg['warmup']} warm-up steps\n"
           f"  {ms['median']:.1f} ms/iter median ({ms['min']:.1f}-{ms['max']:.1f}), {r['tokens_per_s']:,.0f} tokens/s, "
           f"{r['tflops']:.3g} TFLOP/s ({flops_per_token / 1e6:,.0f} MFLOP per token), {mfu} ({peak_source})", cfg)
    if peak_flops and r['mfu'] > 1:
        report('warning: MFU above 100%: the peak is too low (on a CPU, something else ran while it was measured); '
               'run again, or pass --peak_flops', cfg)
    return r


def measure_generation(model, machine, cfg):
    """Time generation as sample.py generates; the result's 'generate' entry, reported as it is measured."""
    prefill, decode = time_generation(model, machine, cfg)
    g = {
        'batch_size': 1, 'prompt_tokens': cfg['prompt_tokens'], 'new_tokens': cfg['generate_tokens'],
        'runs': GENERATE_RUNS, 'kv_cache': True, 'compile': False,
        'temperature': SAMPLING['temperature'], 'top_k': SAMPLING['top_k'],
        'prefill_ms': {k: v * 1000 for k, v in spread(prefill).items()},
        'decode_tokens_per_s': spread(decode),
    }
    p, d = g['prefill_ms'], g['decode_tokens_per_s']
    report(f"generate: batch 1, a {cfg['prompt_tokens']}-token prompt, {cfg['generate_tokens']} new tokens, "
           f'KV cache, eager, {GENERATE_RUNS} runs\n'
           f"  prefill {p['median']:.1f} ms median ({p['min']:.1f}-{p['max']:.1f}), "
           f"decode {d['median']:,.1f} tokens/s median ({d['min']:,.1f}-{d['max']:,.1f})", cfg)
    return g


def main(argv=None):
    cfg = configure(DEFAULTS, sys.argv[1:] if argv is None else argv, TYPES_OF_NONE)
    check_settings(cfg)
    machine = machines.setup(cfg['device'], cfg['dtype'], cfg['compile'], peak_flops=cfg['peak_flops'])
    if machine.world_size > 1:  # under torchrun setup joined its process group: leave it
        machines.teardown()
        raise ValueError('bench.py times one process: run it with python, not torchrun')
    return bench(resolve(cfg, machine), machine)


if __name__ == '__main__':
    cli(main)
