"""train.py in-process and as a command, on a dataset in nanoGPT's format: it learns, resumes exactly, follows its
schedule, writes checkpoints nanoGPT reads, and refuses bad input."""
import os

import numpy as np
import pytest
import torch

import checkpoint
import dataset
import flops
import machine
import train
import training
from configurator import configure
from helpers import ROOT, assert_one_line_error, read_metrics, run, shakespeare, small_run, without_timings
from model import GPTConfig


def test_loss_falls(nanogpt_data, tmp_path):
    losses = train.main(small_run(nanogpt_data, tmp_path, '--max_iters=40', '--lr_decay_iters=40',
                                  '--eval_interval=40', '--dropout=0.0'))
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    records = read_metrics(tmp_path)
    evals = [r for r in records if 'val_loss' in r]
    assert [r['iter'] for r in evals] == [0, 40] and evals[1]['val_loss'] < evals[0]['val_loss']
    assert all({'loss', 'lr', 'ms', 'mfu'} <= r.keys() for r in records if 'loss' in r)
    ckpt = checkpoint.load(os.path.join(tmp_path, 'ckpt.pt'))
    assert ckpt['iter_num'] == 40 and ckpt['config']['n_layer'] == 2
    assert ckpt['model_args']['vocab_size'] == dataset.load_meta(nanogpt_data)['vocab_size']
    assert not ckpt['model_args']['bias']


def test_exact_resume(nanogpt_data, tmp_path):
    """10 iterations in one go == 5, stop, resume to 10: bitwise, dropout and all."""
    whole = train.main(small_run(nanogpt_data, tmp_path / 'whole'))
    first = train.main(small_run(nanogpt_data, tmp_path / 'split', '--max_iters=5'))
    rest = train.main(small_run(nanogpt_data, tmp_path / 'split', '--init_from=resume'))
    assert len(whole) == 10 and first + rest == whole
    a = checkpoint.load(os.path.join(tmp_path, 'whole', 'ckpt.pt'))['model']
    b = checkpoint.load(os.path.join(tmp_path, 'split', 'ckpt.pt'))['model']
    assert all(torch.equal(a[k], b[k]) for k in a)
    iters = [r['iter'] for r in read_metrics(tmp_path / 'split') if 'loss' in r]
    assert iters == list(range(1, 11))  # appended across the resume


def test_lr_schedule():
    def lr(it, decay_lr=True):
        return training.Schedule(dict(training.DEFAULTS, learning_rate=1.0, min_lr=0.1, warmup_iters=10,
                                      lr_decay_iters=110, decay_lr=decay_lr)).lr(it)
    assert 0 < lr(0) < lr(5) < lr(9) < 1.0
    assert lr(10) == 1.0
    assert lr(60) == pytest.approx(0.55)
    assert lr(110) == pytest.approx(0.1) and lr(500) == 0.1
    assert lr(500, decay_lr=False) == 1.0


def test_locked_fields_and_crop(nanogpt_data, tmp_path):
    train.main(small_run(nanogpt_data, tmp_path, '--max_iters=5'))
    with pytest.raises(ValueError, match=r'n_layer=3 was asked for, but the checkpoint has n_layer=2'):
        train.main(small_run(nanogpt_data, tmp_path, '--init_from=resume', '--n_layer=3'))
    with pytest.raises(ValueError, match="pos_emb='rope' was asked for.*pos_emb='learned'"):
        train.main(small_run(nanogpt_data, tmp_path, '--init_from=resume', '--pos_emb=rope'))
    with pytest.raises(ValueError, match='block_size=64 is larger than the 32'):
        train.main(small_run(nanogpt_data, tmp_path, '--init_from=resume', '--block_size=64'))
    # a smaller context crops the model; dropout may change
    train.main(small_run(nanogpt_data, tmp_path, '--init_from=resume', '--block_size=16', '--max_iters=7',
                         '--dropout=0.0'))
    ckpt = checkpoint.load(os.path.join(tmp_path, 'ckpt.pt'))
    assert ckpt['model_args']['block_size'] == 16 and ckpt['model']['transformer.wpe.weight'].shape[0] == 16
    assert ckpt['iter_num'] == 7


def test_nan_stops_and_keeps_the_last_good_checkpoint(nanogpt_data, tmp_path):
    train.main(small_run(nanogpt_data, tmp_path, '--max_iters=5'))
    path = os.path.join(tmp_path, 'ckpt.pt')
    before = open(path, 'rb').read()
    with pytest.raises(ValueError, match='NaN or infinite.*ckpt.pt still holds the last good state'):
        train.main(small_run(nanogpt_data, tmp_path, '--init_from=resume', '--learning_rate=1e38',
                             '--grad_clip=0.0', '--warmup_iters=0', '--decay_lr=False'))
    assert open(path, 'rb').read() == before


def test_compiled_checkpoint_names_load(nanogpt_data, tmp_path):
    train.main(small_run(nanogpt_data, tmp_path, '--max_iters=5'))
    path = os.path.join(tmp_path, 'ckpt.pt')
    ckpt = torch.load(path, weights_only=True)
    ckpt['model'] = {'_orig_mod.' + k: v for k, v in ckpt['model'].items()}
    torch.save(ckpt, path)
    losses = train.main(small_run(nanogpt_data, tmp_path, '--init_from=resume', '--max_iters=6'))
    assert len(losses) == 1


def test_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    def failing_save(obj, f):
        open(f, 'wb').write(b'partial')
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', failing_save)
    with pytest.raises(OSError, match='disk full'):
        checkpoint.save({}, os.path.join(tmp_path, 'ckpt.pt'))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('extra, error, words', [
    (['--batch_sise=3'], ValueError, ["unknown config key 'batch_sise'", 'batch_size']),
    (['--learning_rate=fast'], ValueError, ['learning_rate expects float']),
    (['--block_size=6000'], ValueError, ['val.bin', 'block_size=6000', 'at most 5001']),
    (['--device=cuda'], ValueError, ['CUDA is not available', '--device=cpu']),
    (['--dtype=float16'], ValueError, ["dtype='float16'", 'bfloat16']),
    (['--dtype=half'], ValueError, ["dtype='half'"]),
    (['--init_from=resume'], FileNotFoundError, ['no checkpoint at', 'ckpt.pt']),
    (['--init_from=gpt3'], ValueError, ["init_from='gpt3'"]),
    (['--vocab_size=10'], ValueError, ['vocab_size=10', "is smaller than the dataset's 52 tokens"]),
    (['--grad_clip=-1.0'], ValueError, ['grad_clip=-1.0 must be 0 or more']),
    (['--weight_decay=-0.1'], ValueError, ['weight_decay=-0.1 must be 0 or more']),
    (['--max_iters=-5'], ValueError, ['max_iters=-5 must be 0 or more']),
    (['--seed=-1'], ValueError, ['seed=-1 must be 0 or more']),
    (['--backend=mpi2'], ValueError, ["backend='mpi2' is not one of auto, nccl, gloo"]),
    (['--batch_size=0'], ValueError, ['batch_size=0']),
    (['--n_head=3'], ValueError, ['n_embd=32 is not divisible by n_head=3']),
])
def test_bad_input(nanogpt_data, tmp_path, extra, error, words):
    with pytest.raises(error) as e:
        train.main(small_run(nanogpt_data, tmp_path, *extra))
    for word in words:
        assert word in str(e.value)
    assert not os.path.exists(os.path.join(tmp_path, 'ckpt.pt'))


def test_missing_dataset_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'python data/owt2/prepare.py'):
        train.main(['--dataset=owt2', f'--data_dir={tmp_path}/nothing', '--device=cpu'])


def test_gradient_accumulation_must_divide_by_world_size(nanogpt_data, tmp_path, monkeypatch):
    monkeypatch.setattr(machine, 'setup', lambda *a: machine.Machine('cpu', 'float32', False, world_size=2))
    with pytest.raises(ValueError, match='gradient_accumulation_steps=5 is not divisible by the 2 processes'):
        train.main(small_run(nanogpt_data, tmp_path, '--gradient_accumulation_steps=5'))


def test_corrupt_and_incompatible_checkpoints(nanogpt_data, tmp_path):
    os.makedirs(tmp_path / 'bad')
    (tmp_path / 'bad' / 'ckpt.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='unreadable or corrupt'):
        train.main(small_run(nanogpt_data, tmp_path / 'bad', '--init_from=resume'))
    train.main(small_run(nanogpt_data, tmp_path / 'ok', '--max_iters=5'))
    ckpt = torch.load(tmp_path / 'ok' / 'ckpt.pt', weights_only=True)
    ckpt['model_args']['n_layer'] = 3  # weights of 2 layers, model_args of 3
    torch.save(ckpt, tmp_path / 'ok' / 'ckpt.pt')
    with pytest.raises(ValueError, match=r"do not match its architecture \(missing: transformer.h.2"):
        train.main(small_run(nanogpt_data, tmp_path / 'ok', '--init_from=resume', '--n_layer=3'))


def test_command_line_errors_are_one_line(nanogpt_data, tmp_path):
    result = run('train.py', *small_run(nanogpt_data, tmp_path, '--max_iterz=3'))
    assert_one_line_error(result)
    assert result.stderr.startswith("error: unknown config key 'max_iterz'")


def test_ddp_two_processes_with_gloo(nanogpt_data, tmp_path):
    """torchrun with 2 CPU processes: it trains, evaluates jointly, and only rank 0 logs and saves."""
    out_dir = tmp_path / 'ddp'
    result = run('train.py', *small_run(nanogpt_data, out_dir, '--max_iters=4', '--eval_interval=2',
                                        '--gradient_accumulation_steps=4'), processes=2)
    assert result.returncode == 0, result.stderr[:3000]
    assert result.stdout.count('world size 2') == 1  # one process prints
    assert result.stdout.count('saved checkpoint') == 2
    assert sorted(os.listdir(out_dir)) == ['ckpt.pt', 'loss.png', 'metrics.jsonl']
    records = read_metrics(out_dir)
    assert [r['iter'] for r in records if 'loss' in r] == [1, 2, 3, 4]
    ckpt = checkpoint.load(os.path.join(out_dir, 'ckpt.pt'))
    assert ckpt['iter_num'] == 4 and not any(k.startswith('module.') for k in ckpt['model'])


def test_batches_differ_by_rank_and_step(nanogpt_data):
    meta = dataset.load_meta(nanogpt_data)
    batches = dataset.Batches(nanogpt_data, meta, 32, 4, 'cpu', 1337, vocab_size=meta['vocab_size'])
    x0, y0 = batches.train_batch(0, 0)
    assert torch.equal(x0[:, 1:], y0[:, :-1])  # targets are the inputs shifted by one
    assert torch.equal(x0, batches.train_batch(0, 0)[0])  # a pure function of its key
    assert not torch.equal(x0, batches.train_batch(0, 1)[0])  # another micro-step (or process)
    assert not torch.equal(x0, batches.train_batch(1, 0)[0])
    assert not torch.equal(x0, batches.eval_batch('train', 0)[0])


def test_missing_shakespeare_char_bins_are_prepared(tmp_path):
    data_dir = tmp_path / 'shakespeare_char'
    os.makedirs(data_dir)
    (data_dir / 'input.txt').write_text(open(shakespeare()).read())  # offline: the file a download would fetch
    losses = train.main([f'--data_dir={data_dir}', '--dataset=shakespeare_char', f'--out_dir={tmp_path}/out',
                         '--device=cpu', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16',
                         '--batch_size=2', '--gradient_accumulation_steps=1', '--max_iters=2', '--eval_iters=1'])
    assert len(losses) == 2
    assert os.path.getsize(data_dir / 'train.bin') == 1_003_854 * 2
    assert dataset.load_meta(str(data_dir))['vocab_size'] == 65


def test_wandb_logging_offline(nanogpt_data, tmp_path, monkeypatch):
    pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_DIR', str(tmp_path))
    monkeypatch.setenv('WANDB_SILENT', 'true')
    train.main(small_run(nanogpt_data, tmp_path / 'out', '--max_iters=2', '--wandb_log=True', '--wandb_project=test'))
    runs = [d for d in os.listdir(tmp_path / 'wandb') if d.startswith('offline-run-')]
    assert len(runs) == 1 and any(f.endswith('.wandb') for f in os.listdir(tmp_path / 'wandb' / runs[0]))


@pytest.mark.parametrize('path', sorted(f'config/{f}' for f in os.listdir(os.path.join(ROOT, 'config'))))
def test_every_shipped_config_loads(path):
    """Each config file only sets known keys with the right types, and describes a valid model."""
    cfg = configure(training.DEFAULTS, [os.path.join(ROOT, path)], training.TYPES_OF_NONE)
    model_args = {k: cfg[k] for k in checkpoint.MODEL_KEYS}
    model_args['vocab_size'] = cfg['vocab_size'] or 50304
    GPTConfig(**model_args)


def test_command_line_resume_is_bitwise_exact(nanogpt_data, tmp_path):
    """10 iterations in one process == 5, a new process resuming to 10, dropout on: every logged loss and every
    weight equal, bit for bit; metrics.jsonl has one record per iteration and eval, as the uninterrupted run's."""
    whole = run('train.py', *small_run(nanogpt_data, tmp_path / 'whole'))
    assert whole.returncode == 0, whole.stderr
    first = run('train.py', *small_run(nanogpt_data, tmp_path / 'split', '--max_iters=7', '--eval_interval=5'))
    assert first.returncode == 0, first.stderr  # killed in effect after iteration 7: the checkpoint is from 5
    rest = run('train.py', *small_run(nanogpt_data, tmp_path / 'split', '--init_from=resume'))
    assert rest.returncode == 0, rest.stderr
    assert without_timings(read_metrics(tmp_path / 'split')) == without_timings(read_metrics(tmp_path / 'whole'))
    wa = checkpoint.load(os.path.join(tmp_path, 'whole', 'ckpt.pt'))['model']
    wb = checkpoint.load(os.path.join(tmp_path, 'split', 'ckpt.pt'))['model']
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resumed_run_shows_and_saves_the_checkpoints_architecture(nanogpt_data, tmp_path):
    result = run('train.py', *small_run(nanogpt_data, tmp_path, '--n_layer=1', '--norm=rmsnorm', '--max_iters=5'))
    assert result.returncode == 0, result.stderr
    common = [f'--data_dir={nanogpt_data}', f'--out_dir={tmp_path}', '--device=cpu', '--eval_iters=2',
              '--batch_size=2', '--gradient_accumulation_steps=1', '--init_from=resume']
    result = run('train.py', *common, '--max_iters=6')  # no model keys: GPT-2's defaults are not the model
    assert result.returncode == 0, result.stderr
    config_line = next(line for line in result.stdout.splitlines() if line.startswith('config: '))
    for shown in ('n_layer=1,', "norm='rmsnorm',", 'n_embd=32,', 'block_size=32,', 'vocab_size=52,'):
        assert shown in config_line
    saved = checkpoint.load(os.path.join(tmp_path, 'ckpt.pt'))
    assert (saved['config']['n_layer'], saved['config']['norm'], saved['iter_num']) == (1, 'rmsnorm', 6)
    # asking for another value of a locked field is an error, also when it is the default value
    result = run('train.py', *common, '--n_layer=12', '--max_iters=7')
    assert_one_line_error(result, 'n_layer=12 was asked for, but the checkpoint has n_layer=1')


def test_checkpoint_model_args_are_nanogpts_for_a_gpt2_architecture(nanogpt_data, tmp_path):
    """nanoGPT's sample.py builds GPTConfig(**model_args) with its 7 fields: a GPT-2-architecture checkpoint
    written here has no other key; a modern option adds its own (nanoGPT could not compute it anyway)."""
    train.main(small_run(nanogpt_data, tmp_path / 'gpt2', '--max_iters=5'))
    model_args = checkpoint.load(os.path.join(tmp_path, 'gpt2', 'ckpt.pt'))['model_args']
    assert sorted(model_args) == sorted(checkpoint.NANOGPT_KEYS)
    train.main(small_run(nanogpt_data, tmp_path / 'rope', '--max_iters=5', '--pos_emb=rope', '--n_kv_head=1'))
    model_args = checkpoint.load(os.path.join(tmp_path, 'rope', 'ckpt.pt'))['model_args']
    assert sorted(set(model_args) - set(checkpoint.NANOGPT_KEYS)) == ['n_kv_head', 'pos_emb']


def test_training_runs_without_a_known_peak(nanogpt_data, tmp_path, monkeypatch, capsys):
    """A device with no known peak FLOP/s (MPS, a GPU missing from the table) trains, with MFU shown as '-';
    --peak_flops sets one."""
    monkeypatch.setattr(flops, 'peak_flops', lambda device, dtype: None)
    train.main(small_run(nanogpt_data, tmp_path / 'a', '--max_iters=6'))
    steps = [line for line in capsys.readouterr().out.splitlines() if line.startswith('iter ')]
    assert len(steps) == 6 and all('mfu -,' in line for line in steps)
    assert all(r['mfu'] is None for r in read_metrics(tmp_path / 'a') if 'loss' in r)
    train.main(small_run(nanogpt_data, tmp_path / 'b', '--max_iters=6', '--peak_flops=1e9'))
    assert read_metrics(tmp_path / 'b')[-2]['mfu'] > 0
