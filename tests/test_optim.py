"""optimizer='muon' (Muon for the block matrices, AdamW for the rest) and lr_schedule='wsd'."""
import pytest
import torch

import checkpoint
import machine
import train
import training
from helpers import assert_one_line_error, read_metrics, run, settings_by_parameter, without_timings
from model import GPT, GPTConfig
from muon import MuonAdamW, orthogonalize

MUON = dict(training.DEFAULTS, optimizer='muon', learning_rate=1e-3, weight_decay=0.1, muon_lr=0.02,
            muon_momentum=0.9, muon_weight_decay=0.0)
SCHEDULE = dict(training.DEFAULTS, learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110, decay_fraction=0.2)
CPU = machine.Machine('cpu', 'float32', compile=False)


def gpt2_like():
    """Every kind of parameter: learned positions, biases, LayerNorm, an untied lm_head."""
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32, tie_embeddings=False))


def test_muon_groups_and_their_learning_rates():
    """Muon takes the blocks' matrices; AdamW the rest, decaying the embeddings and lm_head only."""
    model = gpt2_like()
    optimizer = training.configure_optimizer(model, MUON, CPU)
    assert isinstance(optimizer, MuonAdamW)
    block_matrices = {f'transformer.h.{i}.{m}.weight' for i in range(2)
                      for m in ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj')}
    embeddings = {'transformer.wte.weight', 'transformer.wpe.weight', 'lm_head.weight'}
    for name, setting in settings_by_parameter(model, optimizer, 'muon', 'lr', 'weight_decay').items():
        if name in block_matrices:
            assert setting == (True, 0.02, 0.0), name  # muon_lr, muon_weight_decay
        elif name in embeddings:
            assert setting == (False, 1e-3, 0.1), name  # learning_rate, weight_decay
        else:
            assert name.endswith('.bias') or '.ln_' in name, name
            assert setting == (False, 1e-3, 0.0), name  # no decay of biases and norms
    assert {g['momentum'] for g in optimizer.param_groups if g['muon']} == {0.9}
    # the schedule scales every group's base lr by the same factor
    assert training.Schedule(dict(MUON, warmup_iters=3)).apply(optimizer, 0) == 0.25e-3  # a quarter into the warmup
    for name, (lr,) in settings_by_parameter(model, optimizer, 'lr').items():
        assert lr == (0.005 if name in block_matrices else 0.25e-3), name
    assert isinstance(training.configure_optimizer(model, dict(MUON, optimizer='adamw'), CPU), torch.optim.AdamW)


def test_weight_decay_only_where_intended():
    """A step with zero gradients moves a parameter only by its decoupled weight decay."""
    model = gpt2_like()
    optimizer = training.configure_optimizer(model, dict(MUON, muon_weight_decay=0.5), CPU)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        if name.startswith('transformer.h.') and p.dim() == 2:
            assert torch.equal(p, before[name] * (1 - 0.02 * 0.5)), name  # muon_lr * muon_weight_decay
        elif p.dim() == 2:
            assert torch.equal(p, before[name] * (1 - 1e-3 * 0.1)), name  # learning_rate * weight_decay
        else:
            assert torch.equal(p, before[name]), name  # norms and biases: no decay


def test_adamw_groups_compute_as_torch_adamw():
    torch.manual_seed(0)
    ours, theirs = torch.randn(5, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    theirs.data.copy_(ours.data)
    mine = MuonAdamW([{'params': [ours], 'muon': False}], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    torchs = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    for _ in range(5):
        grad = torch.randn(5, 3)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        mine.step()
        torchs.step()
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize('shape', [(64, 16), (16, 64), (24, 24)])
def test_orthogonalize_and_the_muon_step(shape):
    """Newton-Schulz leaves every singular value near 1; one Muon step moves a matrix by such an update,
    scaled by lr * sqrt(max(1, rows / cols))."""
    torch.manual_seed(0)
    grad = torch.randn(shape) * 1e-3  # the scale of the gradient does not matter
    singular_values = torch.linalg.svdvals(orthogonalize(grad, dtype=torch.float32))
    assert singular_values.min() > 0.6 and singular_values.max() < 1.25
    p = torch.randn(shape, requires_grad=True)
    before = p.detach().clone()
    p.grad = grad
    MuonAdamW([{'params': [p], 'muon': True}], lr=0.1, ns_dtype=torch.float32).step()
    step = (before - p.detach()) / (0.1 * max(1, shape[0] / shape[1]) ** 0.5)
    singular_values = torch.linalg.svdvals(step)
    assert singular_values.min() > 0.6 and singular_values.max() < 1.25


def test_wsd_schedule_shape():
    def lr(it, schedule='wsd'):
        return training.Schedule(dict(SCHEDULE, lr_schedule=schedule)).lr(it)  # decays over iterations 88 to 110
    assert 0 < lr(0) < lr(5) < lr(9) < 1.0  # the warmup, as cosine's
    assert all(lr(it) == 1.0 for it in range(10, 89))  # flat
    assert lr(99) == pytest.approx(0.55)  # linear: halfway down at the middle of the decay
    assert lr(95) - lr(96) == pytest.approx(lr(105) - lr(106))
    assert lr(110) == pytest.approx(0.1) and lr(500) == 0.1
    assert [lr(it, 'cosine') for it in range(120)] == [training.Schedule(SCHEDULE).lr(it) for it in range(120)]


TINY = ['--device=cpu', '--dtype=float32', '--n_layer=2', '--n_head=2', '--n_embd=16', '--block_size=16',
        '--batch_size=2', '--eval_iters=4', '--log_interval=1', '--dropout=0.1', '--warmup_iters=2',
        '--lr_decay_iters=10', '--eval_interval=5', '--optimizer=muon', '--lr_schedule=wsd', '--decay_fraction=0.5',
        '--muon_weight_decay=0.1']


def train_process(*argv, processes=None):
    result = run('train.py', *argv, processes=processes)
    assert result.returncode == 0, result.stderr[-3000:]


def test_exact_resume_with_muon(char_data, tmp_path):
    """From the command line: 10 iterations in one go == 5, stop, resume to 10, bit for bit (Muon's momentum
    and AdamW's moments saved and restored); resuming with the other optimizer is a one-line error."""
    argv = [*TINY, f'--data_dir={char_data}']
    train_process(*argv, f"--out_dir={tmp_path / 'whole'}", '--max_iters=10')
    train_process(*argv, f"--out_dir={tmp_path / 'split'}", '--max_iters=5')
    state = checkpoint.load(tmp_path / 'split' / 'ckpt.pt')['optimizer']
    assert {tuple(s) for s in state['state'].values()} == {('momentum_buffer',), ('step', 'exp_avg', 'exp_avg_sq')}
    train_process(*argv, f"--out_dir={tmp_path / 'split'}", '--max_iters=10', '--init_from=resume')
    assert without_timings(read_metrics(tmp_path / 'split')) == without_timings(read_metrics(tmp_path / 'whole'))
    a, b = (checkpoint.load(tmp_path / name / 'ckpt.pt')['model'] for name in ('whole', 'split'))
    assert all(torch.equal(a[k], b[k]) for k in a)
    result = run('train.py', *argv, f"--out_dir={tmp_path / 'split'}", '--max_iters=12', '--init_from=resume',
                 '--optimizer=adamw')
    assert_one_line_error(result, "trained with optimizer='muon'", '--optimizer=muon')


def test_two_process_resume_with_muon(char_data, tmp_path):
    """torchrun, 2 processes (DDP): 8 iterations in one go == 4, then a resume to 8."""
    argv = [*TINY, f'--data_dir={char_data}', '--gradient_accumulation_steps=2', '--eval_interval=4',
            '--lr_decay_iters=8']
    train_process(*argv, f"--out_dir={tmp_path / 'whole'}", '--max_iters=8', processes=2)
    train_process(*argv, f"--out_dir={tmp_path / 'split'}", '--max_iters=4', processes=2)
    train_process(*argv, f"--out_dir={tmp_path / 'split'}", '--max_iters=8', '--init_from=resume', processes=2)
    assert without_timings(read_metrics(tmp_path / 'split')) == without_timings(read_metrics(tmp_path / 'whole'))


@pytest.mark.parametrize('extra, words', [
    (['--optimizer=sgd'], "optimizer='sgd' is not one of adamw, muon"),
    (['--lr_schedule=linear'], "lr_schedule='linear' is not one of cosine, wsd"),
    (['--decay_fraction=0'], 'decay_fraction=0.0 must be in (0, 1]'),
    (['--decay_fraction=1.5'], 'decay_fraction=1.5 must be in (0, 1]'),
    (['--muon_momentum=1.0'], 'muon_momentum=1.0 must be in [0, 1)'),
    (['--optimizer=muon', '--muon_lr=-0.02'], "optimizer='muon' needs muon_lr >= 0"),
    (['--optimizer=muon', '--learning_rate=0'], 'learning_rate > 0'),
])
def test_bad_values(extra, words):
    with pytest.raises(ValueError) as e:
        train.main(['--device=cpu', *extra])
    assert words in str(e.value) and '\n' not in str(e.value)
