"""torch.compile runs generation compiled (issue 21 item 2): no graph breaks and a few recompiles only, in process
(Dynamo's counters). The command (`sample.py --compile=True` with inductor on the CPU, past the context, its logs
counted) is benchmarks/gpu_check.py's check sample_compile, which tests/test_gpu_check.py runs on the CPU."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

from model import GPT, GPTConfig

# prefill (cache position 0), the first new token (position specialized), the next ones (position dynamic),
# the refill of a full cache (length dynamic): the graphs a generation past the context needs, no more
EXPECTED_GRAPHS = 4


@pytest.mark.parametrize('variant', [{}, dict(norm='rmsnorm', pos_emb='rope', mlp='swiglu', n_kv_head=2)])
def test_compiled_generation_past_the_context_has_no_graph_break(variant):
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=4, n_embd=32, **variant)).eval()
    prompt = torch.randint(0, 37, (2, 5))
    eager = model.generate(prompt, 40, temperature=0)
    graphs = CompileCounter()  # Dynamo's graphs, run eagerly: the breaks are Dynamo's, whatever the backend
    model.compile(backend=graphs)
    assert torch.equal(model.generate(prompt, 40, temperature=0), eager)  # 40 tokens: the cache refills twice
    assert not counters['graph_break'], list(counters['graph_break'])
    assert graphs.frame_count <= EXPECTED_GRAPHS
    torch._dynamo.reset()
