"""Runs across nodes, restarts and preemption, proved on one machine: torchrun agents joined over 127.0.0.1 as two
"nodes" (gloo, CPU) log exactly the losses of one agent with as many processes; a worker killed under
--max-restarts, and a run stopped by SIGTERM or SIGUSR1, continue from their checkpoint to the losses of the unbroken
run, bit for bit. Every process a test starts is ended by it."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
from helpers import (ROOT, children, finish, kill_tree, make_text, read_metrics, run, start, start_nodes,
                     without_timings)

TINY = ['--device=cpu', '--compile=False', '--dtype=float32', '--n_layer=1', '--n_head=2', '--n_embd=16',
        '--block_size=16', '--batch_size=2', '--gradient_accumulation_steps=2', '--eval_iters=2', '--dropout=0.1',
        '--learning_rate=1e-3', '--warmup_iters=2', '--init_from=auto']


def args(data_dir, out_dir, max_iters=12, eval_interval=6, *extra):
    return [*TINY, f'--data_dir={data_dir}', '--dataset=shakespeare_char', f'--out_dir={out_dir}',
            f'--max_iters={max_iters}', f'--eval_interval={eval_interval}', f'--lr_decay_iters={max_iters}', *extra]


def text_folder(path):
    """A folder holding only input.txt: train.py prepares shakespeare_char's bins from it on first use."""
    os.makedirs(path)
    (path / 'input.txt').write_text(make_text(20_000))
    return path


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def computed(out_dir):
    return without_timings(read_metrics(out_dir))


@pytest.fixture(scope='module')
def one_agent(tmp_path_factory):
    """The reference: one agent with 2 processes, DDP and FSDP (data prepared by the run)."""
    tmp = tmp_path_factory.mktemp('one_agent')
    data = text_folder(tmp / 'data')
    ok(run('train.py', *args(data, tmp / 'ddp'), processes=2))
    ok(run('train.py', *args(data, tmp / 'fsdp', 12, 6, '--parallel=fsdp'), processes=2))
    return {'data': data, 'ddp': computed(tmp / 'ddp'), 'fsdp': computed(tmp / 'fsdp')}


@pytest.mark.parametrize('rendezvous,parallel,node_local_data', [(False, 'ddp', True), (True, 'fsdp', False)])
def test_two_nodes_log_the_losses_of_one_agent(one_agent, tmp_path, rendezvous, parallel, node_local_data):
    """Two agents x 1 process == one agent x 2, bitwise. Each node's own data_dir is prepared by that node's first
    process; a shared one once, by rank 0. The shared out_dir holds one checkpoint, written as on one agent."""
    data = [text_folder(tmp_path / f'data{node}') for node in (0, 1)] if node_local_data else [
        text_folder(tmp_path / 'data')] * 2
    agents = start_nodes('train.py', *args('unused', tmp_path / 'out', 12, 6, f'--parallel={parallel}'),
                         rendezvous=rendezvous, node_argv=lambda node: [f'--data_dir={data[node]}'])
    results = [ok(finish(a)) for a in agents]
    assert computed(tmp_path / 'out') == one_agent[parallel]
    preparing = [r.stdout.count('is missing: preparing') for r in results]
    assert preparing == ([1, 1] if node_local_data else [1, 0])
    assert all(os.path.exists(d / 'train.bin') for d in data)
    assert checkpoint.load(checkpoint.find_checkpoint(tmp_path / 'out'))['iter_num'] == 12
    assert [f for f in os.listdir(tmp_path / 'out') if f.startswith('.')] == []  # no probe, no lock left


def test_an_out_dir_that_is_not_shared_is_refused(one_agent, tmp_path):
    """Each node its own out_dir: a restart could not read the checkpoint everywhere, so every process says why."""
    agents = start_nodes('train.py', *args(one_agent['data'], 'unused'),
                         node_argv=lambda node: [f"--out_dir={tmp_path / f'out{node}'}"])
    for result in map(finish, agents):
        assert result.returncode != 0
        assert 'is not one folder for all nodes' in result.stderr


def worker(agent, rank):
    """The pid of the training process of the given RANK under a torchrun agent, once it runs."""
    for _ in range(600):
        for pid in children(agent.pid):
            with open(f'/proc/{pid}/environ', 'rb') as f:
                if f'RANK={rank}'.encode() in f.read().split(b'\0'):
                    return pid
        time.sleep(0.1)
    raise TimeoutError('no worker started')


def wait_for(path, process, lines=1):
    """Until path has this many lines (the run got that far); fails if the process ended first."""
    for _ in range(3000):
        if os.path.exists(path) and open(path).read().count('\n') >= lines:
            return
        assert process.poll() is None, 'the run ended first'
        time.sleep(0.02)
    raise TimeoutError(path)


@pytest.fixture(scope='module')
def unbroken(tmp_path_factory):
    """unbroken(processes): (data, the metrics and weights of a 300-iteration run unbroken, on that many processes
    or a plain one), each run once for the tests that break it."""
    tmp = tmp_path_factory.mktemp('unbroken')
    data, runs = text_folder(tmp / 'data'), {}

    def get(processes):
        if processes not in runs:
            out_dir = tmp / f'whole{processes}'
            ok(run('train.py', *args(data, out_dir, 300, 100), processes=processes))
            runs[processes] = computed(out_dir), checkpoint.load(out_dir / 'ckpt.pt')['model']
        return (data, *runs[processes])
    return get


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_run_ends_as_the_unbroken_one(unbroken, tmp_path):
    """SIGKILL to one of 2 workers under --max-restarts=1: torchrun starts the group again, init_from='auto' resumes
    the last checkpoint (a time-based one), and the run logs the losses of the unbroken run, bit for bit."""
    data, whole, _ = unbroken(2)
    killed = tmp_path / 'killed'
    agent = subprocess.Popen(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--max-restarts=1',
         '--nproc_per_node=2', os.path.join(ROOT, 'train.py'),
         *args(data, killed, 300, 100, '--checkpoint_interval_minutes=0.0002')],
        env=dict(os.environ, OMP_NUM_THREADS='1'), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        wait_for(killed / 'metrics.jsonl', agent, lines=25)  # past the first checkpoints
        os.kill(worker(agent, 1), signal.SIGKILL)
        result = ok(finish(agent))
    finally:
        kill_tree(agent)
    restarted_at = [int(line.split('from iteration ')[1].split()[0]) for line in result.stdout.splitlines()
                    if 'from iteration' in line]
    assert restarted_at[0] == 0 and 0 < restarted_at[1] < 300, result.stdout[-2000:]
    assert computed(killed) == whole


@pytest.mark.parametrize('processes,sig', [(None, signal.SIGUSR1),
                                           pytest.param(2, signal.SIGTERM, marks=pytest.mark.slow)])
def test_a_stop_signal_saves_at_the_step_and_the_run_resumes_exactly(unbroken, tmp_path, processes, sig):
    """SIGUSR1 (SLURM's warning) to one process, SIGTERM to torchrun (which passes it to its 2 workers): the run
    saves where it is, between evaluations and time-based checkpoints (every few ms here), exits with 75 and says so;
    the same command then ends as the unbroken run, bit for bit, with the same weights."""
    data, whole, weights = unbroken(processes)
    stopped = tmp_path / 'stopped'
    argv = args(data, stopped, 300, 100, '--checkpoint_interval_minutes=0.0002')
    process = start('train.py', *argv, processes=processes)
    wait_for(stopped / 'metrics.jsonl', process, lines=30)
    process.send_signal(sig)
    result = finish(process)
    assert result.returncode == (75 if processes is None else 1)  # torchrun reports its workers' exit as a failure
    assert f'stopped by {sig.name} at iteration' in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.count('saved checkpoint') > 1  # the time-based ones too
    stopped_at = checkpoint.load(checkpoint.find_checkpoint(stopped))['iter_num']
    assert 30 <= stopped_at < 300 and stopped_at % 100
    ok(run('train.py', *argv, processes=processes))
    assert computed(stopped) == whole
    stopped_weights = checkpoint.load(stopped / 'ckpt.pt')['model']
    assert all(torch.equal(weights[k], stopped_weights[k]) for k in weights)


def test_the_slurm_script_launches_torchrun_on_every_node_and_requeues_a_preempted_job(tmp_path):
    """scripts/slurm_train.sh with SLURM's environment faked (srun and scontrol stand-ins that record their
    arguments): one torchrun per node with the rendezvous on the first node, and a requeue when the job was
    preempted (the run's exit status 75, or the script's own USR1 warning), not when it ended."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'scontrol').write_text('#!/bin/sh\nif [ "$1" = show ]; then printf "gpu7\\ngpu8\\n"; '
                                      'else echo "$@" >> "$RECORD/scontrol"; fi\n')
    (bin_dir / 'srun').write_text('#!/bin/sh\necho "$@" > "$RECORD/srun"\ntrap "exit 75" USR1\n'
                                  'i=0; while [ $i -lt "$SLEEP" ]; do sleep 0.1; i=$((i+1)); done\nexit "$STATUS"\n')
    for f in ('scontrol', 'srun'):
        os.chmod(bin_dir / f, 0o755)

    def job(status, sleep=0, warn=False):
        record = tmp_path / f'record{status}{warn}'
        record.mkdir()
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RECORD=str(record), STATUS=str(status),
                   SLEEP=str(sleep), SLURM_JOB_ID='4242', SLURM_NNODES='2', SLURM_JOB_NODELIST='gpu[7-8]',
                   SLURM_GPUS_ON_NODE='4')
        process = subprocess.Popen(['bash', os.path.join(ROOT, 'scripts', 'slurm_train.sh'), 'config/train_gpt2.py',
                                    '--batch_size=8'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        if warn:
            time.sleep(1)
            process.send_signal(signal.SIGUSR1)
        result = finish(process, 30)
        requeued = (record / 'scontrol').read_text() if (record / 'scontrol').exists() else ''
        return result, (record / 'srun').read_text().split(), requeued

    result, srun, requeued = job(0)
    assert result.returncode == 0 and requeued == ''
    torchrun = srun[srun.index('torchrun'):]
    for arg in ('--nnodes=2', '--nproc_per_node=4', '--rdzv_backend=c10d', '--rdzv_endpoint=gpu7:29500',
                '--rdzv_id=4242', 'train.py', 'config/train_gpt2.py', '--init_from=auto', '--batch_size=8'):
        assert arg in torchrun, (arg, torchrun)
    assert job(75)[2].split() == ['requeue', '4242']
    assert job(1)[2] == ''  # a failed run is not requeued forever
    result, _, requeued = job(0, sleep=100, warn=True)
    assert requeued.split() == ['requeue', '4242'] and result.returncode == 75
