"""What the test files share: the offline assets, small datasets, running a project script as a user runs it, the
tiny runs and the files they write, and the one-line error every script promises. Fixtures made of these are in
conftest.py. numpy and torch are imported where they are used: a test file that needs neither starts without them."""
import json
import os
import pickle
import random
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')

# ----------------------------------------------------------------------------------------------
# offline: the shared assets stand in for downloads (these machines cannot download)

SHAKESPEARE = os.path.join(SHARED, 'data', 'tinyshakespeare', 'input.txt')
OFFLINE = {'HF_HUB_OFFLINE': '1', 'WANDB_MODE': 'offline'}  # conftest.py sets these for the tests and their scripts
if os.path.isdir(os.path.join(SHARED, 'tiktoken_cache')):
    OFFLINE['TIKTOKEN_CACHE_DIR'] = os.path.join(SHARED, 'tiktoken_cache')


def shakespeare():
    """Tiny Shakespeare's path, or a skip: it comes from ../shared (these machines cannot download it)."""
    if not os.path.isfile(SHAKESPEARE):
        pytest.skip(f'needs Tiny Shakespeare at {SHAKESPEARE} (the offline copy in ../shared)')
    return SHAKESPEARE


def gpt2_encoding():
    """tiktoken's GPT-2 encoding, or a skip when it can be neither loaded from a cache nor downloaded."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:
        pytest.skip(f"needs tiktoken's gpt2 encoding (no cache and no network: {type(e).__name__})")


# ----------------------------------------------------------------------------------------------
# datasets and the files of a preparation

WORDS = ('the king my lord shall speak of love and death to her thy heart is not what thou art gone sweet night '
         'come good sir I will be true, yet here we stand! O fair day; what say you? no more.').split()


def make_text(n_chars, seed=0):
    """Text of about n_chars characters in lines of words, the same for a seed: a stand-in corpus."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < n_chars:
        line = ' '.join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))).capitalize()
        lines.append(line)
        size += len(line) + 1
    return '\n'.join(lines)[:n_chars]


def write_char_dataset(path, text=None, nanogpt=False):
    """A character-level dataset of text (make_text(20_000) by default) at path: uint16 ids, the last tenth in
    val.bin, and meta.pkl as corpus.py writes it (dtype, tokenizer, token counts), or with nanogpt=True exactly the
    keys nanoGPT's shakespeare_char writes (vocab_size, stoi, itos)."""
    import numpy as np
    text = make_text(20_000) if text is None else text
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n_train = len(ids) * 9 // 10
    os.makedirs(path, exist_ok=True)
    ids[:n_train].tofile(os.path.join(path, 'train.bin'))
    ids[n_train:].tofile(os.path.join(path, 'val.bin'))
    meta = {'vocab_size': len(chars), 'stoi': stoi, 'itos': dict(enumerate(chars))}
    if not nanogpt:
        meta.update(dtype='uint16', tokenizer='char', train_tokens=n_train, val_tokens=len(ids) - n_train)
    with open(os.path.join(path, 'meta.pkl'), 'wb') as f:
        pickle.dump(meta, f)
    return str(path)


def read_bins(data_dir):
    """(meta, train ids, val ids) of a dataset folder, as a training run reads them."""
    import numpy as np
    from dataset import load_meta, token_dtype
    meta = load_meta(data_dir)
    train, val = (np.memmap(os.path.join(data_dir, name), dtype=token_dtype(meta), mode='r')
                  for name in ('train.bin', 'val.bin'))
    return meta, train, val


def files_under(folder):
    """Every file under folder, as paths relative to it: what a command left behind."""
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def copy_folder(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return str(dst)


# ----------------------------------------------------------------------------------------------
# running a project script as a user runs it

TIMEOUT = 300  # seconds: a guard against a hang, far above any test's run


def start(script, *argv, processes=None, cwd=ROOT, env=None, preexec_fn=None, capture=True):
    """A project script (a path under ROOT, or '-c' and code, as python takes them) started as a user starts it:
    `python script argv`, or under torchrun with `processes` processes; offline (conftest.py puts OFFLINE in the
    environment it inherits) and with one torch thread per process: several run side by side, and CPU kernels sum
    in another order on another number of threads. env adds variables; capture=False sends the output nowhere,
    for a process that is killed rather than read."""
    launcher = [sys.executable] if processes is None else [
        sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={processes}']
    command = [*launcher, script if script == '-c' else os.path.join(ROOT, script), *map(str, argv)]
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(command, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS='1', **(env or {})),
                            preexec_fn=preexec_fn, stdout=output, stderr=output, text=True)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now (for a torchrun master or rendezvous)."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_nodes(script, *argv, nodes=2, processes=1, rendezvous=False, node_argv=None, env=None):
    """torchrun agents on this machine, one per "node", each with `processes` processes, joined over 127.0.0.1:
    the static form (--node_rank, --master_addr, --master_port) or the c10d rendezvous (--rdzv_endpoint). Each is
    started in a process group of its own (kill_tree ends it whole); node_argv(rank) adds arguments per node."""
    port = free_port()
    join = ['--rdzv_backend=c10d', f'--rdzv_endpoint=127.0.0.1:{port}', '--rdzv_id=test'] if rendezvous else [
        '--master_addr=127.0.0.1', f'--master_port={port}']
    agents = []
    for rank in range(nodes):
        launcher = [sys.executable, '-m', 'torch.distributed.run', f'--nnodes={nodes}', f'--nproc_per_node={processes}',
                    *(join if rendezvous else [f'--node_rank={rank}', *join])]
        command = [*launcher, os.path.join(ROOT, script), *map(str, argv), *(node_argv(rank) if node_argv else [])]
        agents.append(subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1', **(env or {})),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       start_new_session=True))
    return agents


def kill_tree(process, sig=None):
    """Signal a process started in a session of its own, its group and its children (SIGKILL by default): torchrun
    starts each worker in a process group of its own."""
    import signal
    try:
        workers = children(process.pid)
    except FileNotFoundError:  # it has ended
        workers = []
    for pid in workers:
        try:
            os.kill(pid, sig or signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, sig or signal.SIGKILL)
    except ProcessLookupError:
        pass


def children(pid):
    """The pids of a process's children (Linux /proc)."""
    kids = []
    for task in os.listdir(f'/proc/{pid}/task'):
        with open(f'/proc/{pid}/task/{task}/children') as f:
            kids += map(int, f.read().split())
    return kids


def finish(process, timeout=TIMEOUT):
    """A started process's result once it ends; past the timeout it is killed and the timeout raised."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process)  # with what it started, where it leads a session of its own (start_nodes)
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run(script, *argv, timeout=TIMEOUT, **options):
    """A project script run to its end (see start for the options): its CompletedProcess, output as text."""
    return finish(start(script, *argv, **options), timeout)


def run_all(*commands):
    """Run the commands, each (script, *argv), side by side (starting Python and torch is most of a short
    command's time); their results in order."""
    return [finish(p) for p in [start(*c) for c in commands]]


def assert_one_line_error(result, *words):
    """What every script promises for bad input: exit code 1 and a single `error: ...` line on stderr, never a
    traceback; the line contains each of words."""
    where = f"{' '.join(result.args[1:])}\nexit {result.returncode}, stderr:\n{result.stderr}"
    assert result.returncode == 1, where
    assert 'Traceback' not in result.stderr, where
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), where
    for word in words:
        assert word in lines[0], f'{word!r} missing from: {lines[0]}'


# ----------------------------------------------------------------------------------------------
# the runs of train.py the tests make, and what they write

MODEL = ['--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16']
RUN = ['--device=cpu', '--compile=False', '--batch_size=2', '--gradient_accumulation_steps=1', '--eval_iters=1',
       '--eval_interval=4', '--max_iters=4', '--warmup_iters=0', '--lr_decay_iters=4', '--dataset=tiny']
TINY = MODEL + RUN  # 4 iterations of a 1-layer model, a checkpoint at 4: for errors and files, not for learning
BENCH = ['--steps=1', '--warmup=0', '--generate_tokens=0', '--prompt_tokens=8']


def small_run(data_dir, out_dir, *extra):
    """train.py's arguments for a small run that learns: 10 iterations of a 2-layer model with dropout, gradient
    accumulation, warmup and an evaluation every 5."""
    return [f'--data_dir={data_dir}', '--dataset=tiny', f'--out_dir={out_dir}', '--device=cpu', '--compile=False',
            '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4',
            '--gradient_accumulation_steps=2', '--eval_iters=4', '--eval_interval=5', '--log_interval=1',
            '--max_iters=10', '--warmup_iters=2', '--lr_decay_iters=10', '--learning_rate=3e-3', '--dropout=0.1',
            *extra]


def read_metrics(out_dir):
    """The records of out_dir/metrics.jsonl, read strictly: NaN or Infinity is an error, as in other languages'
    JSON readers."""
    def refuse(name):
        raise ValueError(f'{name} is not JSON')
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def without_timings(records):
    """What a run computed: its records less the times (ms, and the mfu and tokens/s computed from them) and the
    warnings about them (throughput)."""
    return [{k: v for k, v in r.items() if k not in ('ms', 'mfu', 'tokens_per_s')} for r in records
            if r.get('warning') != 'throughput']


def copy_checkpoint(src_dir, dst_dir, edit):
    """dst_dir/ckpt.pt: the checkpoint of src_dir after edit(ckpt) changed it."""
    import torch
    ckpt = torch.load(os.path.join(src_dir, 'ckpt.pt'), weights_only=True)
    edit(ckpt)
    os.makedirs(dst_dir, exist_ok=True)
    torch.save(ckpt, os.path.join(dst_dir, 'ckpt.pt'))
    return str(dst_dir)


def readers_of_run(run_dir, data_dir, tmp_path):
    """Every script that reads a run's checkpoint, as commands on run_dir."""
    return [
        ('sample.py', f'--out_dir={run_dir}', '--device=cpu', '--max_new_tokens=4'),
        ('export.py', f'--out_dir={run_dir}', f'--to={tmp_path}/hf_out'),
        ('evaluate.py', f'--out_dir={run_dir}', '--device=cpu', f'--data_dir={data_dir}'),
        ('sizing.py', f'--out_dir={run_dir}', '--init_from=resume', f'--data_dir={data_dir}'),
        ('bench.py', f'--out_dir={run_dir}', '--init_from=resume', f'--data_dir={data_dir}', '--device=cpu',
         '--compile=False', '--batch_size=2', *BENCH),
        ('train.py', f'--out_dir={run_dir}', '--init_from=resume', f'--data_dir={data_dir}', *RUN, '--max_iters=8'),
    ]


def readers_of_hf(hf_dir, data_dir, tmp_path):
    """Every script that reads a Hugging Face folder, as commands on hf_dir."""
    return [
        ('sample.py', f'--init_from={hf_dir}', f'--data_dir={data_dir}', '--device=cpu', '--max_new_tokens=4'),
        ('evaluate.py', f'--init_from={hf_dir}', f'--data_dir={data_dir}', '--device=cpu'),
        ('sizing.py', f'--init_from={hf_dir}', f'--data_dir={data_dir}'),
        ('bench.py', f'--init_from={hf_dir}', f'--data_dir={data_dir}', '--device=cpu', '--compile=False',
         '--batch_size=2', *BENCH),
        ('train.py', f'--init_from={hf_dir}', f'--data_dir={data_dir}', f'--out_dir={tmp_path}/ft', *RUN),
    ]


class Exploit:
    """Pickles to a call of func(arg): what pickle.load would run."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def settings_by_parameter(model, optimizer, *keys):
    """{name: (its group's values of keys)} for every parameter of model: what the optimizer does to each, whatever
    the order of its groups. A parameter in no group, or in two, fails the test."""
    names = {id(p): name for name, p in model.named_parameters()}
    settings = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            assert names[id(p)] not in settings, f'{names[id(p)]} is in two groups'
            settings[names[id(p)]] = tuple(group[k] for k in keys)
    assert settings.keys() == set(names.values()), f'in no group: {set(names.values()) - settings.keys()}'
    return settings
