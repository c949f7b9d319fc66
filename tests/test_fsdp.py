"""FSDP2 (--parallel=fsdp) on the CPU with gloo, run as users run it: torchrun subprocesses with real files.
A sharded run trains the same as one process, its checkpoints (ckpt.dcp) resume on any number of processes and
with either parallelism, a killed save never costs the previous checkpoint, and every script reads them."""
import os
import random
import shutil
import signal
import time

import pytest
import torch

import checkpoint
from helpers import assert_one_line_error, read_metrics, run, start


def run_args(data, out_dir, *extra):
    return ['--dataset=chars', f'--data_dir={data}', f'--out_dir={out_dir}', '--device=cpu', '--dtype=float32',
            '--compile=False', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=4',
            '--gradient_accumulation_steps=4', '--max_iters=6', '--lr_decay_iters=8', '--eval_interval=3',
            '--eval_iters=3', '--log_interval=1', '--warmup_iters=0', '--learning_rate=1e-2', '--dropout=0.0', *extra]


def train(data, out_dir, *extra, processes=None):
    """train.py under torchrun with `processes` processes, or as one plain process (None); returns its stdout."""
    result = run('train.py', *run_args(data, out_dir, *extra), processes=processes)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope='module')
def trained(char_data, tmp_path_factory):
    """trained(*extra, processes=None): the out_dir of a finished run with these options, trained once for the
    tests that read the same run (read only: a test that trains on copies it first)."""
    runs = {}

    def get(*extra, processes=None):
        if (extra, processes) not in runs:
            out_dir = tmp_path_factory.mktemp('run')
            runs[extra, processes] = out_dir, train(char_data, out_dir, *extra, processes=processes)
        return runs[extra, processes]
    return get


def losses(out_dir, key='loss'):
    """{iteration: value} of metrics.jsonl: the training losses, or (key='val_loss') the evaluations."""
    return {r['iter']: r[key] for r in read_metrics(out_dir) if key in r}


def assert_close(ours, reference, rel=1e-5):
    assert ours.keys() == reference.keys()
    for k in reference:
        assert abs(ours[k] - reference[k]) <= rel * abs(reference[k]), (k, ours[k], reference[k])


@pytest.mark.parametrize('extra', [[], ['--activation_checkpointing=True'], ['--optimizer=muon']])
def test_two_fsdp_processes_train_as_one_process(trained, extra):
    """The same global batch on 2 sharded processes or 1 plain one: the same initial weights (each process draws
    its shards' part of the same values), the same losses within fp32 rounding; activation checkpointing
    changes nothing either, and Muon orthogonalizes the whole matrices of sharded parameters."""
    one, _ = trained(*extra)
    fsdp, out = trained('--parallel=fsdp', *extra, processes=2)
    assert out.count('world size 2 (fsdp)') == 1  # one process prints
    assert losses(fsdp, 'val_loss')[0] == losses(one, 'val_loss')[0]
    assert_close(losses(fsdp), losses(one))
    assert_close(losses(fsdp, 'val_loss'), losses(one, 'val_loss'))
    assert sorted(os.listdir(fsdp / 'ckpt.dcp')) == ['iter_0000006', 'latest']


def test_sharded_checkpoint_resumes_on_any_number_of_processes_and_either_parallelism(char_data, trained, tmp_path):
    """FSDP on 2 processes, resumed by FSDP on 2 (bitwise the uninterrupted run), and along a chain FSDP 2 -> FSDP
    4 -> DDP on 1 (torchrun) -> a plain process, each leg continuing the same losses within fp32 rounding."""
    whole = losses(trained('--parallel=fsdp', processes=2)[0])  # 6 iterations
    at3 = trained('--parallel=fsdp', '--max_iters=3', processes=2)[0]
    out_dir = shutil.copytree(at3, tmp_path / 'run')
    train(char_data, out_dir, '--parallel=fsdp', '--init_from=resume', '--max_iters=6', processes=2)
    assert losses(out_dir) == whole  # same processes: bitwise

    snapshot = shutil.copytree(at3, tmp_path / 'at3')
    for max_iters, extra, processes in [(4, ['--parallel=fsdp'], 4), (5, [], 1), (6, [], None)]:
        out = train(char_data, snapshot, '--init_from=resume', f'--max_iters={max_iters}', *extra, processes=processes)
        assert 'saved checkpoint' in out
    assert_close(losses(snapshot), whole)
    assert sorted(os.listdir(snapshot)) == ['ckpt.pt', 'loss.png', 'metrics.jsonl']  # ckpt.dcp was superseded

    # and back: a plain process's ckpt.pt resumed sharded
    train(char_data, snapshot, '--init_from=resume', '--max_iters=7', '--parallel=fsdp', processes=2)
    assert sorted(os.listdir(snapshot)) == ['ckpt.dcp', 'loss.png', 'metrics.jsonl']
    assert checkpoint.load(checkpoint.require_checkpoint(str(snapshot)))['iter_num'] == 7


def test_pretrained_weights_load_into_shards(char_data, tmp_path):
    """init_from a Hugging Face GPT-2 folder, cropped to a smaller block_size: rank 0 reads it and sends each
    process its shards; the run is the one a plain process makes from the same folder."""
    from hf import export_hf
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    export_hf(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=64, bias=True)),
              str(tmp_path / 'hf'))
    extra = [f'--init_from={tmp_path / "hf"}', '--max_iters=3', '--learning_rate=1e-3']
    train(char_data, tmp_path / 'one', *extra)
    train(char_data, tmp_path / 'fsdp', *extra, '--parallel=fsdp', processes=2)
    assert losses(tmp_path / 'fsdp', 'val_loss')[0] == losses(tmp_path / 'one', 'val_loss')[0]
    assert_close(losses(tmp_path / 'fsdp'), losses(tmp_path / 'one'))


def test_muon_state_goes_from_shards_to_one_process_and_back(char_data, trained, tmp_path):
    """Muon's momentum and AdamW's moments, saved as shards and resumed by a plain process, and saved whole and
    resumed sharded: the losses of an uninterrupted run within fp32 rounding."""
    whole = losses(trained('--optimizer=muon')[0])  # muon_lr 0.02, the default
    muon = ['--optimizer=muon', '--muon_lr=0.02']
    train(char_data, tmp_path / 'a', *muon, '--parallel=fsdp', '--max_iters=3', processes=2)
    train(char_data, tmp_path / 'a', *muon, '--init_from=resume')
    assert_close(losses(tmp_path / 'a'), whole)
    train(char_data, tmp_path / 'b', *muon, '--max_iters=3')
    train(char_data, tmp_path / 'b', *muon, '--parallel=fsdp', '--init_from=resume', processes=2)
    assert_close(losses(tmp_path / 'b'), whole)


@pytest.mark.slow
def test_killed_sharded_saves_never_cost_the_previous_checkpoint(char_data, tmp_path):
    """A 2-process FSDP run saving at every iteration, killed (SIGKILL to torchrun and its workers) at random
    moments of an iteration (its step, eval and save): each time out_dir holds a complete checkpoint that loads,
    and resuming goes on."""
    out_dir = tmp_path / 'run'
    train(char_data, out_dir, '--parallel=fsdp', '--max_iters=1', '--eval_interval=1', processes=2)
    rng = random.Random(0)
    for _ in range(4):
        proc = start('train.py', *run_args(char_data, out_dir, '--parallel=fsdp', '--init_from=resume',
                                           '--max_iters=100000', '--eval_interval=1', '--lr_decay_iters=100000'),
                     processes=2, capture=False)
        before = checkpoint.load(checkpoint.require_checkpoint(str(out_dir)))['iter_num']
        # past the start-up, into the saves of every iteration: the time of one iteration here, then a random
        # part of the next one
        first = wait_for_save(out_dir, before, proc)
        t0 = time.monotonic()
        wait_for_save(out_dir, first, proc)
        time.sleep(rng.uniform(0, time.monotonic() - t0))
        kill_tree(proc.pid)
        proc.wait()
        ckpt = checkpoint.load(checkpoint.require_checkpoint(str(out_dir)))
        assert ckpt['iter_num'] > before
        model = checkpoint.load_model('resume', str(out_dir))[0]  # every shard of the named checkpoint is there
        assert all(torch.isfinite(p).all() for p in model.parameters())
    iter_num = checkpoint.load(checkpoint.require_checkpoint(str(out_dir)))['iter_num']
    train(char_data, out_dir, '--parallel=fsdp', '--init_from=resume', f'--max_iters={iter_num + 1}',
          '--eval_interval=1', processes=2)
    assert sorted(os.listdir(out_dir / 'ckpt.dcp')) == [f'iter_{iter_num + 1:07d}', 'latest']  # no leftovers


def wait_for_save(out_dir, after, process):
    """Until ckpt.dcp/latest names an iteration past `after` (the run saved again): that iteration. Fails if the
    process ended first."""
    latest = out_dir / 'ckpt.dcp' / 'latest'
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, 'the run ended first'
        try:
            iter_num = int(latest.read_text().strip().removeprefix('iter_'))
        except (OSError, ValueError):  # not written yet
            iter_num = -1
        if iter_num > after:
            return iter_num
        time.sleep(0.01)
    raise TimeoutError(latest)


def kill_tree(pid):
    """SIGKILL a process and all its descendants at once (torchrun's workers run in sessions of their own)."""
    children = {}
    for entry in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{entry}/stat') as f:
                parent = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for p in tree:
        try:
            os.kill(p, signal.SIGSTOP)  # first stop all, so that none acts on another's death
        except ProcessLookupError:
            pass
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_save_cut_short_is_ignored_and_replaced(char_data, trained, tmp_path):
    """What a kill leaves behind: the shards of a newer iteration without `latest` pointing at them, and (a run
    that changed parallelism) a complete ckpt.pt beside ckpt.dcp. The later complete checkpoint wins."""
    out_dir = shutil.copytree(trained('--parallel=fsdp', '--max_iters=3', processes=2)[0], tmp_path / 'run')
    partial = out_dir / 'ckpt.dcp' / 'iter_0000006'
    os.makedirs(partial)
    (partial / '__0_0.distcp').write_bytes(b'half a shard')
    assert checkpoint.load(checkpoint.require_checkpoint(str(out_dir)))['iter_num'] == 3
    train(char_data, out_dir, '--parallel=fsdp', '--init_from=resume', processes=2)
    assert checkpoint.load(checkpoint.require_checkpoint(str(out_dir)))['iter_num'] == 6
    assert sorted(os.listdir(out_dir / 'ckpt.dcp')) == ['iter_0000006', 'latest']

    older = tmp_path / 'older'
    train(char_data, older, '--max_iters=3')
    os.replace(older / 'ckpt.pt', out_dir / 'ckpt.pt')  # iteration 3, beside the shards of iteration 6
    assert checkpoint.require_checkpoint(str(out_dir)) == str(out_dir / 'ckpt.dcp')


def test_sample_and_export_read_a_sharded_checkpoint(trained, tmp_path):
    """sample.py and export.py on an FSDP run's ckpt.dcp, in one plain process: the weights are those a plain
    run reaches (within fp32 rounding), and samples come out."""
    fsdp, _ = trained('--parallel=fsdp', processes=2)
    sharded = checkpoint.load_model('resume', str(fsdp))[0]
    plain = checkpoint.load_model('resume', str(trained()[0]))[0]
    for (name, p), q in zip(sharded.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    result = run('sample.py', f'--out_dir={fsdp}', '--num_samples=2', '--max_new_tokens=30', '--device=cpu')
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count('---------------') == 2
    result = run('export.py', f'--out_dir={fsdp}', f'--to={tmp_path / "hf"}')
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.path.isfile(tmp_path / 'hf' / 'model.safetensors')


@pytest.mark.parametrize('extra, message', [
    (['--parallel=fsdp'], 'run it under torchrun'),
    (['--cpu_offload=True'], 'it needs --parallel=fsdp'),
    (['--parallel=zero3'], "parallel='zero3' is not one of ddp, fsdp"),
])
def test_bad_parallel_options_are_one_line_errors(char_data, tmp_path, extra, message):
    assert_one_line_error(run('train.py', *run_args(char_data, tmp_path / 'out', *extra)), message)
    assert not os.path.exists(tmp_path / 'out')


def test_activation_checkpointing_runs_each_block_again_in_backward():
    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    calls = []
    for block in model.transformer.h:
        block.register_forward_pre_hook(lambda *_: calls.append(1))  # recomputation stops before the block ends
    x = torch.randint(0, 11, (2, 8))
    for recompute, expected in ((False, 2), (True, 4)):
        calls.clear()
        model.activation_checkpointing = recompute
        model(x, x)[1].backward()
        assert len(calls) == expected
