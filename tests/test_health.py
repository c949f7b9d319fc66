"""Is the run right? Training health in metrics.jsonl (the gradient norm before clipping, the steps clipped, tokens/s,
the update to weight ratios), checked against hand computations; health.py's warnings, each fired by a metrics
stream built to trigger it and silent on normal runs; a sabotaged run warns."""
import copy
import math

import pytest
import torch

import dataset
import health
import machine as machines
import training
import train
from configurator import configure
from helpers import read_metrics, run
from model import GPT, GPTConfig


def tiny_step_setup(data_dir, **changes):
    cfg = configure(training.DEFAULTS, [], training.TYPES_OF_NONE).replace(
        gradient_accumulation_steps=2, batch_size=2, block_size=16, learning_rate=1e-2, **changes)
    machine = machines.setup('cpu', 'float32', False)
    meta = dataset.load_meta(data_dir)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=meta['vocab_size']))
    batches = dataset.Batches(data_dir, meta, 16, 2, 'cpu', 0, meta['vocab_size'])
    return cfg, machine, model, batches


@pytest.mark.parametrize('grad_clip', [0.0, 1e-3])
def test_grad_norm_and_update_ratios_equal_a_hand_computation(char_data, grad_clip):
    """train_step's gradient norm is the norm of all gradients before clipping (with or without clipping), and each
    group's update to weight ratio is |w_after - w_before| / |w_before| over the group."""
    cfg, machine, model, batches = tiny_step_setup(char_data, grad_clip=grad_clip)
    by_hand = copy.deepcopy(model)
    for micro_step in range(2):
        x, y = batches.train_batch(3, micro_step)
        (by_hand(x, y)[1] / 2).backward()
    hand_norm = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in by_hand.parameters()))
    optimizer = training.configure_optimizer(model, cfg, machine)
    before = [[p.detach().clone() for p in g['params']] for g in optimizer.param_groups]
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    _, grad_norm, ratios = training.train_step(model, optimizer, scaler, batches, 3, cfg, machine, True)
    assert grad_norm.item() == pytest.approx(hand_norm, rel=1e-5)
    assert len(ratios) == len(optimizer.param_groups) == 2
    for ratio, old, group in zip(ratios, before, optimizer.param_groups):
        change = math.sqrt(sum((p.detach().double() - w.double()).pow(2).sum().item() for p, w in zip(group['params'], old)))
        assert ratio == pytest.approx(change / math.sqrt(sum(w.double().pow(2).sum().item() for w in old)), rel=1e-4)
        assert ratio > 0
    _, _, ratios = training.train_step(model, optimizer, scaler, batches, 4, cfg, machine)
    assert ratios is None  # measured at log steps only


def test_health_fields_in_metrics_of_a_run(char_data, tmp_path):
    """A train.py run (a subprocess) writes the health fields at every logged step: all steps clipped at a tiny
    grad_clip, none without clipping."""
    common = ['--device=cpu', '--compile=False', f'--data_dir={char_data}', '--dataset=tiny', '--n_layer=1',
              '--n_head=2', '--n_embd=16', '--block_size=16', '--batch_size=2', '--gradient_accumulation_steps=1', '--eval_iters=1', '--max_iters=6',
              '--eval_interval=6', '--log_interval=3', '--warmup_iters=0', '--lr_decay_iters=6']
    result = run('train.py', *common, f'--out_dir={tmp_path / "a"}', '--grad_clip=1e-6')
    assert result.returncode == 0, result.stderr
    assert 'tok/s, grad norm' in result.stdout
    steps = [r for r in read_metrics(tmp_path / 'a') if 'loss' in r]
    assert [r['iter'] for r in steps] == [3, 6]
    for r in steps:
        assert r['grad_norm'] > 1e-6 and r['clipped'] == 1.0 and r['tokens_per_s'] > 0
        assert r['update_ratio_0'] > 0 and r['update_ratio_1'] >= 0
        assert r['tokens_per_s'] == pytest.approx(2 * 16 / (r['ms'] / 1000))
    train.main([*common, f'--out_dir={tmp_path / "b"}', '--grad_clip=0.0'])
    assert all(r['clipped'] == 0.0 for r in read_metrics(tmp_path / 'b') if 'loss' in r)
