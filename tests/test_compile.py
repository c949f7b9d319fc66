"""torch.compile runs generation compiled (issue 21 item 2): no graph breaks and a few recompiles only, in process
(Dynamo's counters) and from the command line (`sample.py --compile=True` with inductor on the CPU)."""

import os
import shutil

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

from helpers import run
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


def test_sample_compile_runs_compiled_without_recompiles(char_data, tmp_path):
    """The user's command: inductor compiles on the CPU (it needs a C++ compiler) and logs every graph break and
    recompile (TORCH_LOGS); a symbolic is_causal used to break the graph and recompile the blocks to the limit."""
    compiler = os.environ.get('CXX', 'g++')
    if not shutil.which(compiler):
        pytest.skip(f'inductor needs a C++ compiler on the CPU and {compiler} is not on PATH')
    out = tmp_path / 'out'
    train = run('train.py', f'--data_dir={char_data}', f'--out_dir={out}', '--device=cpu', '--compile=False',
                '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=4', '--max_iters=2',
                '--eval_iters=1', '--eval_interval=2', '--warmup_iters=1', '--lr_decay_iters=2')
    assert train.returncode == 0, train.stderr[-2000:]
    sample = run('sample.py', f'--out_dir={out}', '--device=cpu', '--compile=True', '--num_samples=2',
                 '--max_new_tokens=40', '--start=the king', env={'TORCH_LOGS': 'graph_breaks,recompiles'})
    assert sample.returncode == 0, sample.stderr[-2000:]
    log = sample.stderr
    assert 'Graph break' not in log and 'limit' not in log, log[-3000:]
    assert log.count('Recompiling function') <= EXPECTED_GRAPHS - 1, log[-3000:]
    assert len(sample.stdout.split('---------------')[0]) >= len('the king') + 40
