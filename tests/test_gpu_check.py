"""benchmarks/gpu_check.py, the command to run when a GPU is available, run here as CI runs it: DEVICE=cpu,
every check with tiny sizes, so that the script itself is never the first thing to break on the GPU."""
import json
import os
import sys

import pytest

from helpers import ROOT, run

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import gpu_check  # noqa: E402


def run_check(results, timeout=600, **env):
    return run('benchmarks/gpu_check.py', results, timeout=timeout, env=dict(DEVICE='cpu', **env))


@pytest.mark.slow
def test_every_check_runs_on_the_cpu_and_reports(tmp_path):
    proc = run_check(tmp_path, timeout=900)
    with open(tmp_path / 'gpu_check.json') as f:
        report = json.load(f)
    checks = report['checks']
    assert list(checks) == list(gpu_check.CHECKS), proc.stdout[-3000:]
    assert report['environment']['torch'] and report['device'] == 'cpu'
    with open(tmp_path / 'summary.txt') as f:
        lines = f.read().splitlines()
    assert [line.split()[0] for line in lines] == list(gpu_check.CHECKS)
    statuses = {name: r['status'] for name, r in checks.items()}
    evaluate_ok = {'ok', 'skipped'}  # skipped (with its reason) where tiktoken's cache is missing
    for name, status in statuses.items():
        assert status in (evaluate_ok if name == 'evaluate' else {'ok'}), (name, checks[name]['summary'], proc.stdout[-3000:])
    assert proc.returncode == 0
    assert checks['resume']['max_loss_difference'] == 0  # bitwise on one CPU process
    assert checks['generate']['cache_equals_recompute'] is True
    assert checks['sample_compile']['graph_breaks'] == 0 and checks['sample_compile']['recompiles'] <= 3
    assert checks['train_bf16']['tokens_per_s'] > 0 and checks['train_bf16']['peak_resident_gb'] > 0
    assert checks['train_bf16']['sizing_gb'] > 0
    assert checks['bench_gpt2']['mfu'] > 0
    assert checks['matmul_peak']['measured_tflops'] > 0
    with open(tmp_path / 'log.txt') as f:
        assert 'train.py' in f.read()  # each check's commands and output


def test_only_and_the_deadline(tmp_path):
    """ONLY reruns chosen checks (and only those); past the deadline a check is skipped, with the reason, and the
    run exits 0."""
    proc = run_check(tmp_path, ONLY='matmul_peak,bench_gpt2', DEADLINE='0')
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / 'gpu_check.json') as f:
        checks = json.load(f)['checks']
    assert list(checks) == ['matmul_peak', 'bench_gpt2']
    assert all(r['status'] == 'skipped' and 'deadline' in r['summary'] for r in checks.values())
    proc = run_check(tmp_path, ONLY='nonsense')
    assert proc.returncode == 1 and proc.stderr.strip().startswith('error: ONLY names unknown checks (nonsense)')
