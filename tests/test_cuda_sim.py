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
