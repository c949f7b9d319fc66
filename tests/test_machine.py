"""The machine's decisions: device, dtype and process group under torchrun, and the peak FLOP/s behind MFU."""
import pytest
import torch
import torch.distributed as dist

import flops
import machine


def fake_cuda(monkeypatch, calls, name='NVIDIA H100 80GB HBM3', capability=(9, 0)):
    """CUDA as a GPU machine reports it (torch.cuda.is_bf16_supported() is True on every GPU since Volta, which
    emulate bf16), with set_device and the process group's arguments recorded in `calls`."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda *a: capability)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: name)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda device: calls.append(('set_device', str(device))))
    monkeypatch.setattr(dist, 'init_process_group', lambda backend, **kw: calls.append(('init_process_group', backend, kw)))


def torchrun_env(monkeypatch, rank, local_rank, world_size):
    for key, value in (('RANK', rank), ('LOCAL_RANK', local_rank), ('WORLD_SIZE', world_size)):
        monkeypatch.setenv(key, str(value))


def test_torchrun_with_cuda_pins_each_process_to_its_gpu_before_joining_nccl(monkeypatch):
    """torchrun's headline command with device='auto': process 3 of 4, second GPU of its node. The group binds
    NCCL to that GPU (device_id) and waits an hour before declaring a collective dead (rank 0 saves alone)."""
    calls = []
    fake_cuda(monkeypatch, calls)
    torchrun_env(monkeypatch, 3, 1, 4)
    m = machine.setup(device='auto', dtype='auto', compile=None, backend='auto')
    assert calls == [('set_device', 'cuda:1'), ('init_process_group', 'cuda:nccl,cpu:gloo',
                                                {'timeout': machine.GROUP_TIMEOUT, 'device_id': torch.device('cuda:1')})]
    assert machine.GROUP_TIMEOUT > dist.constants.default_pg_timeout  # gloo's 30 minutes; NCCL's is 10
    assert (m.device, m.backend, m.rank, m.local_rank, m.world_size) == ('cuda:1', 'cuda:nccl,cpu:gloo', 3, 1, 4)
    assert (m.dtype, m.compile, m.master, m.native_bf16) == ('bfloat16', True, False, True)


@pytest.mark.parametrize('backend', ['auto', 'nccl'])
def test_gpu_process_group_also_serves_cpu_tensors(monkeypatch, backend):
    """Defect 1 of issue 21: with FSDP's CPU offload, clipping and Muon run collectives on CPU tensors, which
    NCCL does not carry; a NCCL-only group crashed there on 2+ GPUs. The group now names a backend per device
    type, and torch parses that string into NCCL for CUDA tensors and gloo for CPU ones."""
    calls = []
    fake_cuda(monkeypatch, calls)
    torchrun_env(monkeypatch, 0, 0, 2)
    m = machine.setup(device='cuda', dtype='bfloat16', backend=backend)
    backend_string = calls[-1][1]
    parsed = dist.distributed_c10d.BackendConfig(dist.Backend(backend_string)).get_device_backend_map()
    assert parsed == {'cuda': 'nccl', 'cpu': 'gloo'} and m.backend == backend_string


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


@pytest.mark.parametrize('capability, dtype, native', [((7, 0), 'float16', False), ((7, 5), 'float16', False),
                                                    ((8, 0), 'bfloat16', True), ((9, 0), 'bfloat16', True)])
def test_auto_dtype_is_bf16_only_where_the_gpu_computes_it(monkeypatch, capability, dtype, native):
    """Defect 4: V100 (7.0) and T4 (7.5) report is_bf16_supported() (emulated, slow), so 'auto' picked bf16 there;
    they get float16 with a GradScaler, A100 (8.0) and later bf16."""
    fake_cuda(monkeypatch, [], capability=capability)
    for key in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'):
        monkeypatch.delenv(key, raising=False)
    m = machine.setup(device='cuda', dtype='auto')
    assert (m.dtype, m.native_bf16) == (dtype, native)
    assert machine.setup(device='cuda', dtype='bfloat16').dtype == 'bfloat16'  # asked for: slow, but it runs


# names as torch.cuda.get_device_name reports them, and the table's dense peak in TFLOP/s
GPUS = [('NVIDIA H100 80GB HBM3', 989.4), ('NVIDIA H100 PCIe', 756.5), ('NVIDIA H100 NVL', 835.5),
        ('NVIDIA H200', 989.4), ('NVIDIA H200 NVL', 835.5), ('NVIDIA GH200 480GB', 989.4), ('NVIDIA H800', 989.4),
        ('NVIDIA H20', 148), ('NVIDIA B200', 2250), ('NVIDIA GB200', 2500), ('NVIDIA A100-SXM4-80GB', 312),
        ('NVIDIA A100-PCIE-40GB', 312), ('NVIDIA A100 80GB PCIe', 312), ('NVIDIA A800-SXM4-80GB', 312),
        ('NVIDIA A10G', 70), ('NVIDIA L4', 121), ('NVIDIA L40', 181.05), ('NVIDIA L40S', 362.05),
        ('Tesla V100-SXM2-16GB', 125), ('Tesla V100-PCIE-32GB', 112), ('Tesla T4', 65),
        ('NVIDIA GeForce RTX 3090', 71), ('NVIDIA GeForce RTX 4090', 165.2), ('NVIDIA GeForce RTX 5090', 209.5)]


@pytest.mark.parametrize('name, tflops', GPUS)
def test_gpu_peak_table_matches_names_exactly(monkeypatch, name, tflops):
    """Defect 5: 'L4' matched L40 and L40S by substring, H200 NVL got the SXM's peak, B200 and others had none."""
    fake_cuda(monkeypatch, [], name=name)
    assert flops.peak_flops('cuda:0', 'bfloat16') == pytest.approx(tflops * 1e12)


def test_unknown_gpus_are_measured_and_other_devices_unknown(monkeypatch):
    """A GPU missing from the table (or a variant such as a laptop's) gets a matmul measured on it, not no MFU."""
    measured = []
    monkeypatch.setattr(flops, 'measure_peak_flops', lambda device, dtype, n: measured.append((str(device), dtype, n)) or 1e12)
    for name in ('NVIDIA GeForce RTX 4090 Laptop GPU', 'NVIDIA RTX PRO 6000 Blackwell Server Edition'):
        fake_cuda(monkeypatch, [], name=name)
        assert flops.peak_flops('cuda:0', 'bfloat16') == 1e12
    assert measured == [('cuda:0', torch.bfloat16, 8192)] * 2
    assert flops.peak_flops('mps', 'float32') is None


def test_machine_peak_flops_is_decided_once_and_lazily(monkeypatch):
    """Machine.peak_flops: an explicit value wins and nothing is measured; otherwise measured on the first read
    only (sample.py never reads it, so never pays for it)."""
    calls = []
    monkeypatch.setattr(flops, 'peak_flops', lambda device, dtype: calls.append(device) or 5e11)
    for key in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'):
        monkeypatch.delenv(key, raising=False)
    assert machine.setup(device='cpu', dtype='float32', peak_flops=3e12).peak_flops == 3e12 and calls == []
    m = machine.setup(device='cpu', dtype='float32')
    assert calls == []
    assert (m.peak_flops, m.peak_flops, calls) == (5e11, 5e11, ['cpu'])


def test_measuring_the_peak_leaves_the_global_generator_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert flops.measure_peak_flops('cpu', torch.float32, n=64) > 0
    assert machine.Machine('cpu', 'float32', False).peak_flops > 0  # the real measurement, through the Machine
    assert torch.equal(torch.rand(3), expected)


def test_peak_memory_reports_allocated_and_reserved_on_gpus(monkeypatch):
    """Issue 21.7: allocated is what tensors held, reserved what the caching allocator took (nvidia-smi's view)."""
    monkeypatch.setattr(torch.cuda, 'max_memory_allocated', lambda device: 1.5e9)
    monkeypatch.setattr(torch.cuda, 'max_memory_reserved', lambda device: 2e9)
    gpu = machine.Machine('cuda:0', 'bfloat16', True)
    assert gpu.peak_memory() == {'allocated': 1.5e9, 'reserved': 2e9}
    assert gpu.peak_memory_text() == 'peak memory of this process 1.50 GB allocated, 2.00 GB reserved'
    assert machine.Machine('cpu', 'float32', False).peak_memory()['resident'] > 0
