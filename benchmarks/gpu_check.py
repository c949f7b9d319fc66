"""
The one command to run when a GPU is available: every CUDA path of the project, the most important first,
each a subprocess of the project's own scripts with their documented keys, within a deadline.

    python3 benchmarks/gpu_check.py                    # results in $OUT if set, else ./gpu_check_out
    python3 benchmarks/gpu_check.py RESULTS_FOLDER
    ONLY=train_bf16,resume python3 benchmarks/gpu_check.py     # rerun chosen checks
    DEVICE=cpu python3 benchmarks/gpu_check.py         # every check with tiny sizes on the CPU (CI runs this)

Settings (environment): DEVICE (cuda), DEADLINE (540 s for the whole run), CHECK_TIMEOUT (150 s per check),
ONLY (comma-separated check names, see CHECKS). Self-contained: it writes its own corpus (characters; GPT-2
BPE too where tiktoken's cache is there, else the BPE checks are skipped with the reason) in a temporary
folder. As each check ends, its line is appended to RESULTS/summary.txt and printed, RESULTS/gpu_check.json
is rewritten with every figure so far and the environment (GPU, driver, torch, CUDA), and the end of its
output goes to RESULTS/log.txt: a run cut at any point returns what it did. Exit code 1 when a check failed.
"""

import importlib.util
import json
import os
import pickle
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable  # python3 on the GPU machine: the interpreter that runs this driver
TORCHRUN = [PY, '-m', 'torch.distributed.run', '--standalone']
WORDS = ('the king my lord shall speak of love and death to her thy heart is not what thou art gone sweet night '
         'come good sir I will be true, yet here we stand! O fair day; what say you? no more.').split()

# run sizes: a GPT-2-124M-wide model on a GPU (MFU and memory mean something), a tiny one on the CPU
SIZES = {
    'cuda': dict(model=['--n_layer=12', '--n_head=12', '--n_embd=768', '--block_size=512', '--batch_size=16'],
                 small=['--n_layer=4', '--n_head=4', '--n_embd=256', '--block_size=256', '--batch_size=16'],
                 iters=60, corpus_chars=2_000_000, matmul=8192, new_tokens=300, bench=['--dtype=bfloat16', '--compile=True']),
    'cpu': dict(model=['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4'],
                small=['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4'],
                iters=8, corpus_chars=50_000, matmul=512, new_tokens=20,
                bench=['--dtype=float32', '--compile=False', '--n_layer=2', '--n_head=2', '--n_embd=32',
                       '--block_size=32', '--batch_size=4', '--steps=2', '--warmup=1', '--prompt_tokens=8',
                       '--generate_tokens=6']),
}


class Check:
    """The context of one check: its commands run under the time it has left, its log and its figures."""

    def __init__(self, run, name, timeout):
        self.run, self.name, self.end = run, name, time.time() + timeout
        self.figures, self.log = {}, []

    def sh(self, args, env=None, ok=True):
        """Run args (a list) in the repo root; returns (stdout, stderr). A non-zero exit raises when ok."""
        left = self.end - time.time()
        if left <= 1:
            raise TimeoutError('no time left for: ' + ' '.join(args))
        self.log.append('$ ' + ' '.join(args))
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(self.run.env, **(env or {})), start_new_session=True)
        try:
            out, err = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
            out, err = proc.communicate()
            self.log.append(tail(out, err))
            raise TimeoutError(f'timed out after {left:.0f} s: ' + ' '.join(args[:4]))
        self.log.append(tail(out, err))
        if ok and proc.returncode != 0:
            lines = [line for line in (err or out).strip().splitlines() if line.strip()]
            raise RuntimeError(f'exit {proc.returncode}: ' + (lines[-1][:200] if lines else 'no output'))
        return out, err


def tail(out, err, n=3000):
    return (out[-n:] + ('\n[stderr]\n' + err[-n:] if err.strip() else '')).rstrip()


class Run:
    def __init__(self, device, results, deadline, check_timeout):
        self.device, self.results = device, results
        self.size = SIZES['cuda' if device == 'cuda' else 'cpu']
        self.deadline, self.deadline_s, self.check_timeout = time.time() + deadline, deadline, check_timeout
        self.work = tempfile.mkdtemp(prefix='gpu_check_')
        self.env = dict(os.environ, PYTHONUNBUFFERED='1', WANDB_MODE='offline', HF_HUB_OFFLINE='1')
        self.checks, self.cache = {}, {}
        self.report = {'device': device, 'environment': environment(device), 'checks': self.checks}
        os.makedirs(results, exist_ok=True)
        for name in ('summary.txt', 'log.txt'):
            open(os.path.join(results, name), 'w').close()

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def train_args(self, data, out_dir, *extra, size='model', iters=None):
        iters = iters or self.size['iters']
        return ['train.py', '--dataset=check', f'--data_dir={data}', f'--out_dir={out_dir}', '--overwrite=True',
                *self.size[size], '--gradient_accumulation_steps=1', f'--max_iters={iters}',
                f'--eval_interval={iters}', '--eval_iters=2', '--log_interval=1', '--warmup_iters=2',
                f'--lr_decay_iters={iters}', '--dropout=0.0', f'--device={self.device}', *extra]

    def char_data(self):
        if 'chars' not in self.cache:
            self.cache['chars'] = write_char_dataset(self.path('chars'), self.size['corpus_chars'])
        return self.cache['chars']

    def base_run(self, c):
        """A small trained run that the sampling checks read (trained once, by the first check that needs it)."""
        out_dir = self.path('base')
        if not os.path.exists(os.path.join(out_dir, 'ckpt.pt')):
            c.sh([PY, *self.train_args(self.char_data(), out_dir, '--compile=False', size='small')])
        return out_dir

    def run_check(self, name, fn):
        timeout = min(self.check_timeout, self.deadline - time.time())
        t0 = time.time()
        c = Check(self, name, max(timeout, 0))
        try:
            if timeout <= 1:
                raise Skip(f'the deadline ({self.deadline_s:.0f} s) was reached')
            summary = fn(self, c)
            status = 'ok'
        except Skip as e:
            status, summary = 'skipped', str(e)
        except Exception as e:
            status, summary = 'FAILED', f'{type(e).__name__}: {e}'
        seconds = time.time() - t0
        self.checks[name] = {'status': status, 'seconds': round(seconds, 1), 'summary': summary, **c.figures}
        line = f'{name:<18} {status:<7} {seconds:5.0f}s  {summary}'
        print(line, flush=True)
        with open(os.path.join(self.results, 'summary.txt'), 'a') as f:
            f.write(line + '\n')
        with open(os.path.join(self.results, 'log.txt'), 'a') as f:
            f.write(f'==== {line}\n' + '\n'.join(c.log) + '\n\n')
        with open(os.path.join(self.results, 'gpu_check.json'), 'w') as f:
            json.dump(self.report, f, indent=1)


class Skip(Exception):
    """A check that cannot run here, and why."""


def environment(device):
    """GPU name, driver, torch, CUDA, Python: read in a subprocess so that this driver never initializes CUDA."""
    code = ('import json, platform, torch; c = torch.cuda.is_available(); print(json.dumps({"torch": torch.__version__,'
            ' "cuda": torch.version.cuda, "python": platform.python_version(), "cuda_available": c,'
            ' "gpu": torch.cuda.get_device_name() if c else None,'
            ' "capability": list(torch.cuda.get_device_capability()) if c else None,'
            ' "gpu_count": torch.cuda.device_count() if c else 0}))')
    try:
        env = json.loads(subprocess.run([PY, '-c', code], capture_output=True, text=True, timeout=120).stdout)
    except Exception as e:
        env = {'error': f'{type(e).__name__}: {e}'}
    try:
        env['driver'] = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                       capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        env['driver'] = None
    if device == 'cpu':
        env['cpu_flags'] = cpu_flags()
    return env


def cpu_flags():
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), [])
    except OSError:
        return []
    return [f for f in flags if f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16')]


# ----------------------------------------------------------------------------------------------
# data: a corpus of made-up lines, as characters and (where tiktoken's cache is) as GPT-2 BPE


def make_text(n_chars, seed=0):
    rng = random.Random(seed)
    text = ''
    while len(text) < n_chars:
        text += ' '.join(rng.choices(WORDS, k=rng.randint(3, 12))).capitalize() + '\n'
    return text[:n_chars]


def write_bins(folder, ids, meta):
    """train.bin, val.bin (the last 10%) and meta.pkl as dataset.py reads them."""
    import numpy as np
    ids = np.array(ids, dtype=np.uint16)
    n_val = len(ids) // 10
    os.makedirs(folder, exist_ok=True)
    ids[:-n_val].tofile(os.path.join(folder, 'train.bin'))
    ids[-n_val:].tofile(os.path.join(folder, 'val.bin'))
    with open(os.path.join(folder, 'meta.pkl'), 'wb') as f:
        pickle.dump(dict(meta, dtype='uint16', train_tokens=len(ids) - n_val, val_tokens=n_val), f)
    return folder


def write_char_dataset(folder, n_chars):
    text = make_text(n_chars)
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    return write_bins(folder, [stoi[ch] for ch in text], {'vocab_size': len(chars), 'tokenizer': 'char',
                                                          'stoi': stoi, 'itos': dict(enumerate(chars))})


def gpt2_encoding(env):
    """tiktoken's GPT-2 encoding from a cache (this machine cannot download it), or Skip with the reason."""
    candidates = [env.get('TIKTOKEN_CACHE_DIR'), os.path.join(ROOT, 'shared', 'tiktoken_cache'),
                  os.path.join(os.path.dirname(ROOT), 'shared', 'tiktoken_cache'),
                  os.path.join(tempfile.gettempdir(), 'data-gym-cache')]
    cache = next((d for d in candidates if d and os.path.isdir(d) and os.listdir(d)), None)
    if cache is None:
        raise Skip("GPT-2 BPE needs tiktoken's cache (TIKTOKEN_CACHE_DIR or shared/tiktoken_cache), none here")
    env['TIKTOKEN_CACHE_DIR'] = cache
    os.environ['TIKTOKEN_CACHE_DIR'] = cache
    try:
        import tiktoken
        return tiktoken.get_encoding('gpt2')
    except Exception as e:
        raise Skip(f"tiktoken's gpt2 encoding is not in {cache} ({type(e).__name__})") from None


# ----------------------------------------------------------------------------------------------
# reading what the scripts wrote


def metrics(out_dir):
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def train_figures(out_dir, stdout, args):
    """tokens/s and MFU (medians over the iterations after the first 5: allocation, compilation), the last
    training loss and the peak memory of train.py's last line, in GB."""
    steps = [r for r in metrics(out_dir) if 'ms' in r]
    later = steps[5:] or steps
    tokens = 1
    for a in args:  # tokens per iteration from the run's own arguments
        if a.split('=')[0] in ('--batch_size', '--block_size', '--gradient_accumulation_steps'):
            tokens *= int(a.split('=')[1])
    ms = statistics.median(r['ms'] for r in later)
    mfus = [r['mfu'] for r in later if r.get('mfu') is not None]
    figures = {'tokens_per_s': round(tokens / ms * 1000), 'ms_per_iter': round(ms, 2),
               'mfu': round(statistics.median(mfus), 4) if mfus else None, 'last_loss': steps[-1]['loss']}
    match = re.search(r'peak memory of this process (.*)', stdout)
    for value, kind in re.findall(r'([\d.]+) GB (\w+)', match.group(1) if match else ''):
        figures[f'peak_{kind}_gb'] = float(value)
    return figures


def train_line(f):
    mfu = f"MFU {f['mfu']:.1%}" if f.get('mfu') is not None else 'MFU -'
    memory = ', '.join(f"{f[k]:.2f} GB {k[5:-3]}" for k in ('peak_allocated_gb', 'peak_reserved_gb', 'peak_resident_gb')
                       if k in f)
    return f"{f['tokens_per_s']:,} tokens/s, {mfu}, loss {f['last_loss']:.3f}, peak {memory or '?'}"


def sizing_prediction(c, args, dtype):
    """sizing.py's memory need for these arguments (GB): mixed precision or fp32, as the run trains."""
    out, _ = c.sh([PY, 'sizing.py', *[a for a in args[1:] if not a.startswith(('--overwrite', '--device'))], '--json'])
    rows = json.loads(out)['memory']['training']
    row = next((r for r in rows if r['variant'].startswith('mixed precision (' if dtype != 'float32' else 'fp32')), rows[0])
    return row['total'] / 1e9


# ----------------------------------------------------------------------------------------------
# the checks, in the order they run


def train_check(dtype, compile):
    def check(run, c):
        cpu_fp16 = run.device == 'cpu' and dtype == 'float16'  # train.py refuses float16 on a CPU
        args = run.train_args(run.char_data(), run.path(c.name), '--dtype=' + ('float32' if cpu_fp16 else dtype),
                              f'--compile={compile}')
        out, _ = c.sh([PY, *args])
        c.figures.update(train_figures(run.path(c.name), out, args))
        line = train_line(c.figures)
        try:
            c.figures['sizing_gb'] = sizing_prediction(c, args, dtype)
            measured = c.figures.get('peak_allocated_gb') or c.figures.get('peak_resident_gb')
            line += f", sizing.py predicts {c.figures['sizing_gb']:.3g} GB" + (
                f" (measured/predicted {measured / c.figures['sizing_gb']:.2f})" if measured else '')
        except Exception as e:  # the figure is missing, the training check itself passed
            c.figures['sizing_error'] = f'{type(e).__name__}: {e}'
            line += f'; sizing.py failed: {e}'
        if cpu_fp16:
            line += ' (float32: float16 needs CUDA)'
        return line
    return check


def torchrun_auto(run, c):
    args = run.train_args(run.char_data(), run.path(c.name), '--compile=False')
    args[args.index(f'--device={run.device}')] = '--device=auto'
    out, _ = c.sh([*TORCHRUN, '--nproc_per_node=1', *args])
    device = re.search(r'device (\S+), dtype (\S+),', out)
    c.figures.update(train_figures(run.path(c.name), out, args), device=device and device.group(1))
    return f"device=auto chose {device.group(1)} {device.group(2)}; " + train_line(c.figures) if device else train_line(c.figures)


def fsdp_check(*extra):
    def check(run, c):
        dtype = '--dtype=bfloat16' if run.device == 'cuda' else '--dtype=float32'
        args = run.train_args(run.char_data(), run.path(c.name), '--parallel=fsdp', '--compile=False', dtype, *extra)
        out, _ = c.sh([*TORCHRUN, '--nproc_per_node=1', *args])
        c.figures.update(train_figures(run.path(c.name), out, args))
        return train_line(c.figures)
    return check


PROBE = '''
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, os.getcwd())
import machine
nccl = dist.is_nccl_available() and torch.cuda.is_available()
backend = machine.GPU_BACKEND if nccl else 'gloo'
dist.init_process_group(backend=backend)  # no device_id: NCCL is never initialized (two ranks share one GPU)
x = torch.ones(4) * (dist.get_rank() + 1)
dist.all_reduce(x)  # clip_grad_norm_ under CPU offload
gathered = torch.empty(8)
dist.all_gather_into_tensor(gathered, torch.ones(4))  # Muon's all-gathers under CPU offload
result = 'fixed group ' + backend + ': CPU all_reduce and all_gather ok'
if nccl:
    only_nccl = dist.new_group(backend='nccl')
    try:
        dist.all_reduce(torch.ones(4), group=only_nccl)
        result += '; NCCL alone also carried it'
    except Exception as e:
        result += '; NCCL alone fails (defect 1 reproduced: ' + type(e).__name__ + ')'
else:
    result += '; no NCCL here: the NCCL-only group is not tried'
assert x[0].item() == 3 and gathered.sum().item() == 8
if dist.get_rank() == 0:
    print('PROBE ' + result)
dist.destroy_process_group()
'''


def offload_probe(run, c):
    """Defect 1 on one GPU: two processes sharing it run the CPU collectives of FSDP's CPU offload through the
    process group machine.setup makes (NCCL refuses two ranks on one GPU, so NCCL itself is never used)."""
    probe = run.path('probe.py')
    with open(probe, 'w') as f:
        f.write(PROBE)
    out, _ = c.sh([*TORCHRUN, '--nproc_per_node=2', probe])
    line = next((line[6:] for line in out.splitlines() if line.startswith('PROBE ')), 'no result printed')
    c.figures['probe'] = line
    return line


def resume(run, c):
    """An uninterrupted run against one stopped at half and resumed: the largest difference of their losses."""
    data, n = run.char_data(), run.size['iters']
    c.sh([PY, *run.train_args(data, run.path('whole'), '--compile=False')])
    c.sh([PY, *run.train_args(data, run.path('halves'), '--compile=False', f'--lr_decay_iters={n}', iters=n // 2)])
    c.sh([PY, *run.train_args(data, run.path('halves'), '--compile=False', f'--lr_decay_iters={n}', '--init_from=resume')])
    whole = {r['iter']: r['loss'] for r in metrics(run.path('whole')) if 'loss' in r}
    halves = {r['iter']: r['loss'] for r in metrics(run.path('halves')) if 'loss' in r}
    if whole.keys() != halves.keys():
        raise RuntimeError(f'the resumed run logged iterations {sorted(halves)}, the whole one {sorted(whole)}')
    diff = max(abs(whole[k] - halves[k]) for k in whole)
    c.figures['max_loss_difference'] = diff
    return f'{len(whole)} iterations; largest loss difference resumed vs uninterrupted {diff:.3g}' + (
        ' (bitwise)' if diff == 0 else ' (not bitwise: not promised on CUDA)')


def generate(run, c):
    """Greedy samples with the KV cache (sample.py) equal to recomputation (benchmarks/sample_recompute.py);
    sample.py's tokens/s, and transformers' generate on the same weights (export.py) where transformers is."""
    out_dir, n = run.base_run(c), run.size['new_tokens']
    argv = [f'--out_dir={out_dir}', '--num_samples=1', f'--max_new_tokens={n}', '--temperature=0', '--start=The ',
            f'--device={run.device}', '--dtype=float32']
    cached, err = c.sh([PY, 'sample.py', *argv])
    recomputed, _ = c.sh([PY, 'benchmarks/sample_recompute.py', *argv])
    same = cached.split('\n---------------')[0] == recomputed.split('\n---------------')[0]
    rate = re.search(r'([\d.]+) tokens/s', err)
    c.figures.update(cache_equals_recompute=same, tokens_per_s=float(rate.group(1)) if rate else None)
    if not same:
        raise RuntimeError('the KV-cache sample differs from the recomputed one')
    line = f'cache == recompute ({n} greedy tokens); sample.py {c.figures["tokens_per_s"]} tokens/s (fp32, batch 1)'
    if importlib.util.find_spec('transformers') is None:
        return line + '; transformers is not installed: no comparison'
    hf = run.path('hf')
    c.sh([PY, 'export.py', f'--out_dir={out_dir}', f'--to={hf}', '--force=True'])
    code = ('import sys, time, torch; from transformers import AutoModelForCausalLM as M; d = sys.argv[2]; '
            'm = M.from_pretrained(sys.argv[1]).to(d).eval(); n = int(sys.argv[3]); x = torch.tensor([[1]], device=d); '
            'kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0); m.generate(x, **kw); '
            'sync = torch.cuda.synchronize if d == "cuda" else (lambda: None); sync(); t = time.perf_counter(); '
            'm.generate(x, **kw); sync(); print("HF", n / (time.perf_counter() - t))')
    out, _ = c.sh([PY, '-c', code, hf, run.device, str(n)])
    c.figures['transformers_tokens_per_s'] = round(float(out.split('HF')[-1]), 1)
    return line + f"; transformers' generate {c.figures['transformers_tokens_per_s']} tokens/s"


def sample_compile(run, c):
    """sample.py --compile=True past the context (inductor, also on the CPU: CI's test of the command), counting
    Dynamo's recompilations and graph breaks in its logs."""
    out_dir, n = run.base_run(c), run.size['new_tokens'] * 2
    out, err = c.sh([PY, 'sample.py', f'--out_dir={out_dir}', '--num_samples=2', f'--max_new_tokens={n}',
                     '--start=The ', '--compile=True', f'--device={run.device}'],
                    env={'TORCH_LOGS': 'recompiles,graph_breaks'})
    recompiles, breaks = err.count('Recompiling function'), len(re.findall(r'Graph break', err))
    c.figures.update(recompiles=recompiles, graph_breaks=breaks)
    # at most 4 graphs whatever the length: the prefill, the first new token, the next ones (position dynamic) and
    # the refill of a full cache (tests/test_compile.py); more is a recompilation per token
    if recompiles > 3 or breaks:
        raise RuntimeError(f'{recompiles} recompilations, {breaks} graph breaks (log.txt has them)')
    first = out.split('\n---------------')[0]
    if len(first) < len('The ') + n:  # a char model: a token is a character
        raise RuntimeError(f'the first sample has {len(first)} characters, not the prompt and {n} tokens')
    return f'compiled generation: {recompiles + 1} graphs, no graph break'


def train_variant(*extra):
    def check(run, c):
        args = run.train_args(run.char_data(), run.path(c.name), '--compile=False', *extra)
        out, _ = c.sh([PY, *args])
        c.figures.update(train_figures(run.path(c.name), out, args))
        return ' '.join(extra) + ': ' + train_line(c.figures)
    return check


def evaluate(run, c):
    """evaluate.py on a few HellaSwag-format examples it writes, with a model trained on GPT-2 BPE tokens."""
    enc = gpt2_encoding(run.env)
    data = write_bins(run.path('bpe'), enc.encode_ordinary(make_text(run.size['corpus_chars'] // 10)),
                      {'vocab_size': enc.n_vocab, 'tokenizer': 'gpt2'})
    out_dir = run.path('bpe_run')
    c.sh([PY, *run.train_args(data, out_dir, '--compile=False', '--vocab_size=50304', size='small',
                              iters=min(run.size['iters'], 20))])
    rng = random.Random(0)
    examples = run.path('hellaswag.jsonl')
    with open(examples, 'w') as f:
        for _ in range(8):
            endings = [make_text(60, seed=rng.randrange(10 ** 6)) for _ in range(4)]
            f.write(json.dumps({'ctx': make_text(80, seed=rng.randrange(10 ** 6)), 'endings': endings,
                                'label': rng.randrange(4)}) + '\n')
    out, _ = c.sh([PY, 'evaluate.py', f'--out_dir={out_dir}', f'--data={examples}', '--json=True',
                   f'--device={run.device}'])
    result = json.loads(out.strip().splitlines()[-1])
    c.figures.update(n=result['n'], acc_norm=result['acc_norm'])
    return f"{result['n']} examples scored, acc_norm {result['acc_norm']:.3f} (a tiny model: chance is 0.25)"


MATMUL = '''
import sys, torch
sys.path.insert(0, '.')
import flops
device, n = sys.argv[1], int(sys.argv[2])
dtype = torch.bfloat16 if device == 'cuda' else torch.float32
measured = flops.measure_peak_flops(device, dtype, n=n)
table = flops.gpu_table_peak(torch.cuda.get_device_name()) if device == 'cuda' else None
print('MATMUL', measured, table)
'''


def matmul_peak(run, c):
    out, _ = c.sh([PY, '-c', MATMUL, run.device, str(run.size['matmul'])])
    measured, table = out.split('MATMUL')[-1].split()
    measured, table = float(measured), None if table == 'None' else float(table)
    c.figures.update(measured_tflops=round(measured / 1e12, 2), table_tflops=table and table / 1e12)
    dtype = 'bf16' if run.device == 'cuda' else 'fp32'
    n = run.size['matmul']
    if table:
        return f'{n}^3 {dtype} matmul {measured / 1e12:.0f} TFLOP/s, {measured / table:.0%} of the table\'s {table / 1e12:.0f}'
    return f'{n}^3 {dtype} matmul {measured / 1e12:.3g} TFLOP/s (no table entry for this device)'


def bench_gpt2(run, c):
    """bench.py's GPT-2 124M (a tiny model on the CPU): MFU, memory and generation speed, alone, last."""
    out, _ = c.sh([PY, 'bench.py', '--json=True', f'--device={run.device}', *run.size['bench']])
    result = json.loads(out)
    train = result['train']
    c.figures.update(tokens_per_s=round(train['tokens_per_s']), mfu=train['mfu'], peak_source=train['peak_source'],
                     memory_gb={k: round(v / 1e9, 3) for k, v in result.get('memory', {}).items()},
                     decode_tokens_per_s=result.get('generate', {}).get('decode_tokens_per_s', {}).get('median'))
    mfu = f"MFU {train['mfu']:.1%}" if train['mfu'] is not None else 'MFU -'
    memory = ', '.join(f'{v:.2f} GB {k}' for k, v in c.figures['memory_gb'].items())
    return (f"{result['params'] / 1e6:.1f}M params: {train['tokens_per_s']:,.0f} tokens/s, {mfu} ({train['peak_source']}), "
            f"{memory}; decode {c.figures['decode_tokens_per_s'] or 0:,.0f} tokens/s")


CHECKS = {
    'train_bf16': train_check('bfloat16', False),
    'train_bf16_compile': train_check('bfloat16', True),
    'fp16_gradscaler': train_check('float16', False),
    'torchrun_auto': torchrun_auto,
    'fsdp': fsdp_check(),
    'fsdp_offload': fsdp_check('--cpu_offload=True', '--activation_checkpointing=True'),
    'offload_probe': offload_probe,
    'resume': resume,
    'generate': generate,
    'sample_compile': sample_compile,
    'muon': train_variant('--optimizer=muon'),
    'modern_blocks': train_variant('--norm=rmsnorm', '--pos_emb=rope', '--mlp=swiglu', '--n_kv_head=1'),
    'evaluate': evaluate,
    'matmul_peak': matmul_peak,
    'bench_gpt2': bench_gpt2,
}


def main():
    device = os.environ.get('DEVICE', 'cuda')
    results = sys.argv[1] if len(sys.argv) > 1 else os.environ.get('OUT') or os.path.join(ROOT, 'gpu_check_out')
    only = [name for name in os.environ.get('ONLY', '').split(',') if name]
    unknown = [name for name in only if name not in CHECKS]
    if device not in ('cuda', 'cpu'):
        sys.exit(f'error: DEVICE={device!r} is not cuda or cpu')
    if unknown:
        sys.exit(f"error: ONLY names unknown checks ({', '.join(unknown)}); the checks: {', '.join(CHECKS)}")
    run = Run(device, results, float(os.environ.get('DEADLINE', 540)), float(os.environ.get('CHECK_TIMEOUT', 150)))
    env = run.report['environment']
    print(f"gpu_check on {device}: {env.get('gpu') or 'no GPU'}, driver {env.get('driver')}, torch {env.get('torch')}, "
          f"CUDA {env.get('cuda')}; results in {results}", flush=True)
    if device == 'cuda' and not env.get('cuda_available'):
        sys.exit('error: no CUDA GPU here (torch.cuda.is_available() is False): run with DEVICE=cpu for the CPU mode')
    try:
        for name, fn in CHECKS.items():
            if not only or name in only:
                run.run_check(name, fn)
    finally:
        shutil.rmtree(run.work, ignore_errors=True)
    failed = [name for name, r in run.checks.items() if r['status'] == 'FAILED']
    print(f"{len(run.checks) - len(failed)} of {len(run.checks)} checks did not fail"
          + (f"; failed: {', '.join(failed)}" if failed else ''), flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
