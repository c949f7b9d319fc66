"""CUDA paths run on the CPU with torch's CUDA calls faked (no GPU in CI): what the data pipeline hands to the
GPU. machine.py's CUDA decisions are simulated in test_machine.py."""
import torch

import dataset


def test_batches_pin_one_contiguous_block_before_copying_to_the_gpu(char_data, monkeypatch):
    """Defect 6 of issue 21: x and y were non-contiguous slices of one (B, T + 1) array; pinning them made the
    copy to the GPU go through an unpinned temporary, so non_blocking did nothing. Every tensor pinned must be
    contiguous, and the batch is the CPU path's, token for token."""
    meta = dataset.load_meta(char_data)
    cpu = dataset.Batches(char_data, meta, 16, 4, 'cpu', 1337, meta['vocab_size'])
    expected = cpu.train_batch(3, 1)
    pinned, copies = [], []
    real_to = torch.Tensor.to

    def pin_memory(self):
        pinned.append(self.is_contiguous())
        return self

    def to(self, device, *args, non_blocking=False, **kwargs):
        if str(device).startswith('cuda'):
            copies.append((self.is_contiguous(), non_blocking))
            device = 'cpu'
        return real_to(self, device, *args, non_blocking=non_blocking, **kwargs)

    monkeypatch.setattr(torch.Tensor, 'pin_memory', pin_memory)
    monkeypatch.setattr(torch.Tensor, 'to', to)
    x, y = dataset.Batches(char_data, meta, 16, 4, 'cuda:0', 1337, meta['vocab_size']).train_batch(3, 1)
    assert pinned and all(pinned), 'a non-contiguous tensor was pinned'
    assert copies == [(True, True)]  # one copy of the pinned block, asynchronous
    assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])
    assert x.is_contiguous() and y.is_contiguous() and x.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
    assert x.dtype == y.dtype == torch.int64


def test_rng_states_are_this_gpus_only_and_resume_with_fewer_gpus(monkeypatch):
    """Defect 3 of issue 21: every visible GPU's RNG state was saved and all restored, so a resume seeing fewer
    GPUs than the save failed with IndexError. A checkpoint holds the process's own GPU's state; an older
    checkpoint's list of 8 restores this process's entry on a machine with 2 GPUs, and none past the list."""
    import checkpoint
    import resume
    own = torch.full((16,), 7, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_initialized', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'get_rng_state', lambda device='cuda': own)
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda state, device='cuda': restored.append(state))
    [state] = checkpoint.all_rng_states(1)
    assert state['cuda'] is own  # one tensor: this process's GPU, not a list of every visible one
    assert resume.usable_rng_states([state])
    resume.set_rng_state(state)
    assert restored == [own]

    eight = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 1)
    resume.set_rng_state(dict(state, cuda=eight))  # saved on 8 GPUs, resumed as the process on GPU 1
    assert restored[-1] is eight[1]
    restored.clear()
    resume.set_rng_state(dict(state, cuda=eight[:1]))  # saved on 1 GPU, this process is on GPU 1: nothing to restore
    assert restored == []
