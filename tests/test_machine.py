"""The machine's decisions: device, dtype and process group under torchrun, and the peak FLOP/s behind MFU."""
import pytest
import torch
import torch.distributed as dist

import machine


def fake_cuda(monkeypatch, calls, name='NVIDIA H100 80GB HBM3'):
    """CUDA as a GPU machine reports it, with set_device and the process group recorded in `calls`."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: name)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda device: calls.append(('set_device', str(device))))
    monkeypatch.setattr(dist, 'init_process_group', lambda backend, **kw: calls.append(('init_process_group', backend)))


def test_torchrun_with_cuda_pins_each_process_to_its_gpu_before_joining_nccl(monkeypatch):
    """torchrun's headline command with device='auto': process 3 of 4, second GPU of its node."""
    calls = []
    fake_cuda(monkeypatch, calls)
    monkeypatch.setenv('RANK', '3')
    monkeypatch.setenv('LOCAL_RANK', '1')
    monkeypatch.setenv('WORLD_SIZE', '4')
    m = machine.setup(device='auto', dtype='auto', compile=None, backend='auto')
    assert calls == [('set_device', 'cuda:1'), ('init_process_group', 'nccl')]
    assert (m.device, m.backend, m.rank, m.local_rank, m.world_size) == ('cuda:1', 'nccl', 3, 1, 4)
    assert (m.dtype, m.compile, m.master) == ('bfloat16', True, False)


def test_torchrun_on_cpu_uses_gloo_and_a_single_process_joins_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, 'init_process_group', lambda backend, **kw: calls.append(backend))
    for key in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'):
        monkeypatch.delenv(key, raising=False)
    m = machine.setup(device='cpu', dtype='float32')
    assert calls == [] and (m.rank, m.world_size, m.backend, m.master) == (0, 1, '', True)
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setenv('LOCAL_RANK', '1')
    monkeypatch.setenv('WORLD_SIZE', '2')
    m = machine.setup(device='cpu', dtype='float32')
    assert calls == ['gloo'] and (m.device, m.rank, m.world_size) == ('cpu', 1, 2)
    with pytest.raises(ValueError, match="backend='nccl' needs CUDA GPUs"):
        machine.setup(device='cpu', dtype='float32', backend='nccl')


def test_machine_is_read_only():
    m = machine.Machine('cpu', 'float32', False)
    with pytest.raises(AttributeError):
        m.device = 'cuda'


def test_peak_flops_of_known_and_unknown_devices(monkeypatch):
    fake_cuda(monkeypatch, [], name='NVIDIA H100 80GB HBM3')
    assert machine.peak_flops('cuda:0', 'bfloat16') == 989e12
    fake_cuda(monkeypatch, [], name='NVIDIA B200')  # not in the table: no MFU rather than no training
    assert machine.peak_flops('cuda:0', 'bfloat16') is None
    assert machine.peak_flops('mps', 'float32') is None


def test_measuring_the_cpu_peak_leaves_the_global_generator_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert machine.cpu_peak_flops(torch.float32, n=64) > 0
    assert torch.equal(torch.rand(3), expected)
