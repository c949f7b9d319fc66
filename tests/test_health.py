"""Is the run right? Training health in metrics.jsonl (the gradient norm before clipping, the steps clipped, tokens/s,
the update to weight ratios), checked against hand computations; health.py's warnings, each fired by a metrics
stream built to trigger it and silent on normal runs; a sabotaged run warns."""
import copy
import json
import math
import os

import numpy as np
import pytest
import torch

import dataset
import health
import machine as machines
import reference
import training
import train
from configurator import configure
from helpers import read_metrics, run, shakespeare, without_timings
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
        change = math.sqrt(sum((p.detach().double() - w.double()).pow(2).sum().item()
                               for p, w in zip(group['params'], old)))
        assert ratio == pytest.approx(change / math.sqrt(sum(w.double().pow(2).sum().item() for w in old)), rel=1e-4)
        assert ratio > 0
    _, _, ratios = training.train_step(model, optimizer, scaler, batches, 4, cfg, machine)
    assert ratios is None  # measured at log steps only


def test_health_fields_in_metrics_of_a_run(char_data, tmp_path):
    """A train.py run (a subprocess) writes the health fields at every logged step: all steps clipped at a tiny
    grad_clip, none without clipping."""
    common = ['--device=cpu', '--compile=False', f'--data_dir={char_data}', '--dataset=tiny', '--n_layer=1',
              '--n_head=2', '--n_embd=16', '--block_size=16', '--batch_size=2', '--gradient_accumulation_steps=1',
              '--eval_iters=1', '--max_iters=6',
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


def steps(losses, start=1, **fixed):
    return [{'iter': start + i, 'loss': loss, 'grad_norm': 1.0, 'tokens_per_s': 1000.0, **fixed}
            for i, loss in enumerate(losses)]


def warnings_of(records, cfg=None):
    monitor = health.Monitor(cfg or {})
    return [(r['iter'], kind) for r in records for kind, _ in monitor.feed(r)]


def test_a_loss_spike_warns_once_per_episode():
    records = steps([2.0] * 10 + [5.0, 5.0, 2.0, 2.0, 5.0])
    assert warnings_of(records) == [(11, 'spike'), (15, 'spike')]  # not again at 12: the same episode


def test_exploding_gradient_and_throughput_drop_warn():
    records = steps([2.0] * 12)
    records[10]['grad_norm'] = 30.0
    records[11]['tokens_per_s'] = 100.0
    assert warnings_of(records) == [(11, 'gradient'), (12, 'throughput')]


def test_divergence_names_where_the_best_checkpoint_is(tmp_path):
    evals = [{'iter': 100 * i, 'train_loss': t, 'val_loss': v}
             for i, (t, v) in enumerate([(2.0, 2.1), (1.5, 1.6), (1.3, 1.65), (1.2, 1.7), (1.1, 1.8), (1.0, 1.9)])]
    for always, where in ((False, str(tmp_path / 'ckpt.pt') + ' holds it'), (True, 'holds the latest, not the best')):
        monitor = health.Monitor({'out_dir': str(tmp_path), 'always_save_checkpoint': always})
        found = [(r['iter'], w) for r in evals for w in monitor.feed(r)]
        assert [(it, kind) for it, (kind, _) in found] == [(400, 'divergence')]
        assert 'best val loss 1.6000 was at iteration 100' in found[0][1][1] and where in found[0][1][1]


def test_a_plateau_at_the_unigram_entropy_warns(char_data):
    ids = np.fromfile(os.path.join(char_data, 'train.bin'), dtype=np.uint16)
    p = np.bincount(ids) / len(ids)
    entropy = -sum(q * math.log(q) for q in p if q > 0)
    assert reference.unigram_entropy(char_data) == pytest.approx(entropy, rel=1e-9)
    cfg = {'data_dir': char_data, 'warmup_iters': 2}
    assert warnings_of(steps([entropy * 1.01] * 11), cfg) == [(10, 'plateau')]  # at 10 logged steps
    assert warnings_of(steps([entropy * 0.8] * 11), cfg) == []  # below it
    assert warnings_of(steps([entropy * (1.5 - 0.03 * i) for i in range(11)]), cfg) == []  # falling towards it


def tiny_run(char_data, out_dir, *extra):
    """train.py's arguments for 30 iterations of a small model that learns, logged at each."""
    return ['--device=cpu', '--compile=False', f'--data_dir={char_data}', '--dataset=tiny', '--n_layer=2',
            '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=8', '--gradient_accumulation_steps=1',
            '--eval_iters=2', '--max_iters=30', '--eval_interval=10', '--log_interval=1', '--warmup_iters=2',
            '--lr_decay_iters=30', f'--out_dir={out_dir}', *extra]


def test_a_normal_run_is_silent_a_sabotaged_one_warns_and_resumed_warns_alike(char_data, tmp_path, monkeypatch,
                                                                              capsys):
    """A small run that learns has no warning (throughput, which depends on the machine's other jobs, aside); at
    ~300x the learning rate the same run warns (a spike, a plateau, and far from a reference band at 1.0 nats that
    its settings match), on the console and in metrics.jsonl; resumed from a checkpoint at its first warning, its
    metrics.jsonl (warnings included) equals the uninterrupted run's."""
    train.main(tiny_run(char_data, tmp_path / 'normal', '--learning_rate=3e-3'))
    assert [r for r in read_metrics(tmp_path / 'normal') if r.get('warning') not in (None, 'throughput')] == []
    monkeypatch.setattr(reference, 'FOLDER', str(tmp_path / 'references'))
    (tmp_path / 'references').mkdir()
    (tmp_path / 'references' / 'tiny.json').write_text(json.dumps({
        'name': 'tiny', 'config': '(this test)', 'source': 'made up', 'match': {'n_embd': 32, 'learning_rate': 1.0},
        'points': [{'iter': it, 'val_loss': 1.0} for it in (10, 20, 30)]}))
    capsys.readouterr()
    train.main(tiny_run(char_data, tmp_path / 'sabotaged', '--learning_rate=1.0'))
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith('warning')]
    records = read_metrics(tmp_path / 'sabotaged')
    warned = [r for r in records if r.get('warning') not in (None, 'throughput')]
    assert {'spike', 'plateau', 'reference'} <= {r['warning'] for r in warned}
    assert [r['iter'] for r in warned if r['warning'] == 'reference'] == [10, 20, 30]
    assert {'iter': 0, 'tokens': 0, 'reference': 'tiny'} in records  # for plot.py's band
    assert [f"warning: {r['message']}" for r in warned] == [line for line in printed if 'throughput' not in line]
    # split at the first warning: its record stays with the step, and the monitor goes on from the kept records
    first = warned[0]['iter']
    train.main(tiny_run(char_data, tmp_path / 'split', '--learning_rate=1.0', f'--max_iters={first}'))
    train.main(tiny_run(char_data, tmp_path / 'split', '--learning_rate=1.0', '--init_from=resume'))
    assert without_timings(read_metrics(tmp_path / 'split')) == without_timings(records)


def test_the_quick_start_matches_its_reference_and_the_band_drawn_is_the_stored_one(tmp_path):
    """The quick start's settings find references/shakespeare_char_cpu.json (other settings find none); the band
    curves.draw puts behind a run is that file's min-max over the seeds, and plot.py draws it by name."""
    import curves
    ref = reference.load('shakespeare_char_cpu')
    cfg = configure(training.DEFAULTS, ['config/train_shakespeare_char_cpu.py', '--out_dir=elsewhere', '--seed=7'],
                    training.TYPES_OF_NONE)
    assert reference.find(cfg)['name'] == 'shakespeare_char_cpu'
    assert reference.find(cfg.replace(learning_rate=1e-2)) is None
    assert reference.find(configure(training.DEFAULTS, [], training.TYPES_OF_NONE)) is None
    records = [{'iter': p['iter'], 'val_loss': p['val_loss'] + 0.01, 'train_loss': p['val_loss']}
               for p in ref['points']]
    fig = curves.draw([('run', records)], str(tmp_path / 'loss.png'), ref=ref)
    polygon = fig.axes[0].collections[0].get_paths()[0].vertices
    points = ref['points']
    for p in points:
        at = polygon[np.isclose(polygon[:, 0], p['iter'])][:, 1]
        assert min(at) == pytest.approx(p['val_loss_min']) and max(at) == pytest.approx(p['val_loss_max'])
    assert all(p['val_loss_min'] <= p['val_loss'] <= p['val_loss_max'] for p in points) and len(points) >= 3
    far = {'iter': points[-1]['iter'], 'val_loss': points[-1]['val_loss_max'] + 1.0}
    assert 'far outside the reference band' in reference.outside(ref, far)
    assert reference.outside(ref, {'iter': points[-1]['iter'], 'val_loss': points[-1]['val_loss']}) is None
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
    result = run('plot.py', str(out), '--reference=shakespeare_char_cpu', f'--out={tmp_path / "runs.png"}')
    assert result.returncode == 0 and (tmp_path / 'runs.png').exists(), result.stderr
    assert run('plot.py', str(out), '--reference=nothing').stderr.startswith("error: no reference 'nothing'")


def test_setup_check_passes_here_and_names_the_cause_of_a_sabotaged_run(shakespeare_dir):
    """Shortened to 50 iterations (--iters) for the test: the default 150 take about a minute."""
    ok = run('check_setup.py', f'--data_dir={shakespeare_dir}', '--iters=50')
    assert ok.returncode == 0 and ok.stdout.startswith('setup check'), ok.stdout + ok.stderr
    assert 'FAILED' not in ok.stdout and len(ok.stdout.strip().splitlines()) == 1
    bad = run('check_setup.py', f'--data_dir={shakespeare_dir}', '--iters=50', '--learning_rate=0.2', '--muon_lr=2.0')
    assert bad.returncode == 1 and bad.stdout.startswith('setup check FAILED'), bad.stdout + bad.stderr
    assert '--learning_rate=0.2' in bad.stdout and 'likely cause' in bad.stdout


@pytest.fixture(scope='module')
def shakespeare_dir(tmp_path_factory):
    """Tiny Shakespeare's characters prepared as the quick start's data (from the offline copy)."""
    import corpus
    data_dir = str(tmp_path_factory.mktemp('data') / 'shakespeare_char')
    corpus.prepare_builtin('shakespeare_char', data_dir, input=shakespeare())
    return data_dir


def test_the_recorded_normal_runs_of_the_shipped_configs_raise_no_warning():
    """Every seed's logged steps in references/ (train.py's own runs of the shipped configs: the quick start and its
    BPE form) and the reference's evaluations, replayed through the Monitor with the configs' settings and the
    recorded unigram entropy of their data: no warning but throughput (recorded on a machine shared with other
    jobs), and none outside the band of their own reference."""
    replayed = set()
    for name in reference.names():
        ref = reference.load(name)
        cfg = configure(training.DEFAULTS, ref['config'].split(), training.TYPES_OF_NONE)
        evals = [{'iter': p['iter'], 'val_loss': p['val_loss'], 'train_loss': p['val_loss']} for p in ref['points']]
        for seed_steps in ref.get('steps', []):
            monitor = health.Monitor(cfg, entropy=ref['unigram_entropy'])
            records = sorted(seed_steps + evals, key=lambda r: r['iter'])
            assert {kind for r in records for kind, _ in monitor.feed(r)} <= {'throughput'}, name
            assert not any(reference.outside(ref, e) for e in evals)
            replayed.add(name)
    assert replayed >= {'shakespeare_char_cpu', 'shakespeare_bpe_cpu'}
