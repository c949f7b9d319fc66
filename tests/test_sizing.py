"""sizing.py: exact parameter counts, the memory formulas (by hand and against what autograd really keeps),
FLOPs, the checklist, and the command line's errors."""
import json
import math

import pytest
import torch
from torch.nn import functional as F

import checkpoint
import lora
import machine
import sizing
import training
from configurator import configure
from helpers import ROOT, assert_one_line_error, run
from model import GPT, GPTConfig

NO_DEVICES = []  # no time estimates: keeps the tests from measuring the CPU


def report_for(argv, device_memory=80 * 10 ** 9, devices=NO_DEVICES):
    return sizing.sizing_report(*sizing.resolve_config(argv), device_memory, devices)


# the published parameter counts: each of a shipped config/model_*.py and of the pretrained weights of that name
PUBLISHED = [
    ('gpt2', 'gpt2', 124_439_808),  # OpenAI's GPT-2 checkpoints, vocab 50257
    ('gpt2_medium', 'gpt2-medium', 354_823_168),
    ('gpt2_large', 'gpt2-large', 774_030_080),
    ('gpt2_xl', 'gpt2-xl', 1_557_611_200),
    ('tinyllama_1b', None, 1_100_048_384),  # TinyLlama-1.1B (grouped-query attention, 4 key/value heads)
    ('llama2_7b', None, 6_738_415_616),  # Llama-2-7B
    ('smollm2_135m', None, 134_515_008),  # these four also against transformers: tests/test_open_models.py
    ('qwen2_5_0_5b', None, 494_032_768),  # q/k/v biases
    ('qwen3_0_6b', None, 596_049_920),  # q/k norms, head size 128 (not 1024 / 16)
    ('llama3_2_1b', None, 1_235_814_400),  # Llama 3's rope scaling
    ('mini_gpt', None, 131_392),  # the mini-GPT of the design notes
]


@pytest.mark.parametrize('preset, pretrained, published', PUBLISHED)
def test_parameter_total_is_the_published_count(preset, pretrained, published):
    """sizing.py's report of the preset file (and of the pretrained weights' name), and the model of the preset
    file's settings as train.py reads them, counted on the meta device."""
    preset_file = f'{ROOT}/config/model_{preset}.py'
    for argv in [[preset_file]] + ([[f'--init_from={pretrained}']] if pretrained else []):
        parameters = report_for(argv)['parameters']
        assert parameters['total'] == published
        assert sum(row['count'] for row in parameters['rows']) == published
    cfg = configure(training.DEFAULTS, [preset_file], training.TYPES_OF_NONE)
    with torch.device('meta'):
        model = GPT(GPTConfig(**{k: cfg[k] for k in checkpoint.MODEL_KEYS}))
    assert sum(p.numel() for p in model.parameters()) == published


def test_mini_gpt_table_matches_the_design_notes_layer_by_layer():
    """The seed's hand count: wte 512·64, per block 4·64² attention + 2·64·256 MLP + 2·64 norms, final norm 64,
    no position table (rotary) and no lm_head (tied)."""
    report = report_for([f'{ROOT}/config/model_mini_gpt.py'])
    rows = {row['component']: row for row in report['parameters']['rows']}
    assert {k: rows[k]['count'] for k in ('wte', 'wpe', 'ln_f', 'lm_head')} == {'wte': 32_768, 'wpe': 0, 'ln_f': 64, 'lm_head': 0}
    assert {k: rows[k]['per_block'] for k in ('attn_q', 'attn_k', 'attn_v', 'attn_out', 'mlp_in', 'mlp_out', 'norms')} == \
        {'attn_q': 4096, 'attn_k': 4096, 'attn_v': 4096, 'attn_out': 4096, 'mlp_in': 16_384, 'mlp_out': 16_384, 'norms': 128}
    assert report['parameters']['blocks'] == 2 * 49_280
    assert report['parameters']['rule_12Ld2'] == 12 * 2 * 64 ** 2
    # the meta-device count is the count of a real model
    _, model_config, _ = sizing.resolve_config([f'{ROOT}/config/model_mini_gpt.py'])
    assert sum(p.numel() for p in GPT(model_config).parameters()) == 131_392


def test_grouped_query_attention_and_untied_head_are_split_by_shape():
    rows = {row['component']: row for row in report_for([f'{ROOT}/config/model_tinyllama_1b.py'])['parameters']['rows']}
    assert rows['attn_q']['per_block'] == 2048 * 2048  # 32 query heads of 64
    assert rows['attn_k']['per_block'] == rows['attn_v']['per_block'] == 4 * 64 * 2048  # 4 key/value heads of 64
    assert rows['mlp_in']['per_block'] == 2 * 5632 * 2048  # SwiGLU's gate and up, stacked in c_fc
    assert rows['lm_head']['count'] == rows['wte']['count'] == 32000 * 2048
    # biases count, split the same way: c_attn's bias has (n_head + 2·n_kv_head)·head_size entries
    biased = {row['component']: row for row in report_for(['--n_layer=1', '--n_head=4', '--n_kv_head=2', '--n_embd=32',
                                                           '--vocab_size=64', '--block_size=8', '--bias=True'])['parameters']['rows']}
    assert (biased['attn_q']['count'], biased['attn_k']['count'], biased['attn_v']['count']) == (32 * 32 + 32, 16 * 32 + 16, 16 * 32 + 16)


def test_memory_matches_a_hand_calculation():
    """The mini-GPT (131,392 parameters; d 64, 2 layers, 4 heads of 16, d_ff 256, vocab 512, rotary, GELU,
    RMSNorm) with batch_size 8 at its context of 32 tokens: 256 tokens per micro-batch."""
    report = report_for([f'{ROOT}/config/model_mini_gpt.py', '--batch_size=8'], device_memory=5_500_000)
    memory = report['memory']
    n = 131_392
    assert memory['weights'] == {'fp32': 4 * n, 'bf16': 2 * n, 'int8': n}
    # k and v: 2 layers x 4 heads x 16 x 2 bytes each = 512 bytes a token
    assert memory['kv_cache'] == {'bytes_per_token': 512, 'per_sequence': 512 * 32, 'batch': 512 * 32 * 8}
    assert memory['inference_bf16'] == {'total': 2 * n + 512 * 32, 'fits': True}
    # per layer and token in bf16: norms' fp32 inputs 8·64 + 2 bytes x (inputs of c_attn, c_proj, c_fc 3·64
    # + q, k, v 3·64 + rotated q, k 2·64 + GELU's input and output 2·256) + log-sum-exp 4 x 4 heads
    layer = 8 * 64 + 2 * (3 * 64 + 3 * 64 + 2 * 64 + 2 * 256) + 4 * 4
    assert layer == 2576
    # outside the blocks: ln_f's fp32 input, lm_head's bf16 input, 14 bytes per vocab entry for logits and loss
    head = 4 * 64 + 2 * 64 + 14 * 512
    tokens = 8 * 32
    mixed = tokens * (2 * layer + head)
    no_flash = tokens * (2 * (layer - 4 * 4 + 6 * 4 * 32) + head)  # the probabilities: fp32 and bf16, 4 heads x 32 keys
    recompute = tokens * (2 * 4 * 64 + layer + head)  # each block's fp32 input, one block rebuilt
    fp32 = tokens * (2 * (8 * 64 + 4 * (3 * 64 + 3 * 64 + 2 * 64 + 2 * 256) + 4 * 4) + 4 * 64 + 4 * 64 + 16 * 512)
    got = {t['variant']: (t['bytes_per_param'], t['state'], t['activations'], t['total'], t['fits']) for t in memory['training']}
    assert got == {
        'fp32': (16, 16 * n, fp32, 16 * n + fp32, False),
        'mixed precision (bf16 autocast)': (18, 18 * n, mixed, 18 * n + mixed, False),
        'mixed precision, no flash attention': (18, 18 * n, no_flash, 18 * n + no_flash, False),
        'mixed precision, recomputation': (18, 18 * n, recompute, 18 * n + recompute, True),
    }
    assert (mixed, recompute) == (3_252_224, 2_723_840)
    memory_line = [x for x in report['checklist'] if x['check'] == 'memory'][0]
    assert memory_line['status'] == 'warning' and 'recomputation' in memory_line['message']


def test_training_state_is_what_adamw_keeps():
    """sizing's training state, measured: after a step of train.py's AdamW on the mini-GPT, its fp32 weights, their
    gradients and the optimizer's tensors (less its step counts) take exactly the bytes of sizing's fp32 state, and
    the FSDP processes of the plan hold a share each of that same state."""
    argv = [f'{ROOT}/config/model_mini_gpt.py', '--batch_size=2', '--gpus=4']
    report = report_for(argv)
    torch.manual_seed(0)
    model = GPT(sizing.resolve_config(argv)[1])
    optimizer = training.configure_optimizer(model, training.DEFAULTS, machine.Machine('cpu', 'float32', compile=False))
    idx = torch.randint(0, model.config.vocab_size, (2, model.config.block_size))
    model(idx, idx)[1].backward()
    optimizer.step()
    kept = [*model.parameters(), *(p.grad for p in model.parameters()),
            *(t for state in optimizer.state.values() for name, t in state.items() if name != 'step')]
    measured = sum(t.numel() * t.element_size() for t in kept)
    assert next(t['state'] for t in report['memory']['training'] if t['variant'] == 'fp32') == measured
    sharded = [row['state'] for row in report['plan']['rows'] if 'FSDP' in row['variant']]
    assert len(sharded) == 3 and all(state * 4 == measured for state in sharded)


def test_state_per_gpu_of_gpt2_xl_by_hand():
    """GPT-2 XL (1,557,611,200 parameters) finetuned, the state each GPU holds: DDP the whole of it, the fp32
    weights, gradients and AdamW's two moments (16 bytes a parameter, as measured above) and autocast's bf16 weight
    copies (2), plus on several GPUs the buckets DDP reduces the gradients from (4); FSDP a share of the fp32 state,
    which CPU offload keeps in host memory instead."""
    def state_per_gpu(gpus):
        plan = report_for([f'{ROOT}/config/finetune_shakespeare.py', f'--gpus={gpus}'])['plan']
        return {row['variant']: (row['state'], row['host_per_process']) for row in plan['rows']}
    assert state_per_gpu(1) == {  # FSDP without offload shards nothing on one GPU: not a row
        'DDP': (28_037_001_600, 0),  # 18 bytes a parameter
        'DDP + activation checkpointing': (28_037_001_600, 0),
        'LoRA rank 8, bfloat16 base': (3_617_712_000, 0),  # test_lora_memory_of_gpt2_xl_by_hand
        'FSDP + CPU offload + activation checkpointing': (24_921_779_200, 24_921_779_200),  # 16 bytes, on the host
    }
    assert state_per_gpu(2) == {
        'DDP': (34_267_446_400, 0),  # 22 bytes
        'FSDP': (12_460_889_600, 0),  # 8 bytes: half of 16
        'DDP + activation checkpointing': (34_267_446_400, 0),
        'FSDP + activation checkpointing': (12_460_889_600, 0),
        'LoRA rank 8, bfloat16 base': (3_617_712_000 + 4 * 9_830_400, 0),  # + DDP's buckets of adapter gradients
        'FSDP + CPU offload + activation checkpointing': (12_460_889_600, 12_460_889_600),
    }
    assert state_per_gpu(8)['DDP'] == (34_267_446_400, 0) and state_per_gpu(8)['FSDP'] == (3_115_222_400, 0)  # 2 bytes


@pytest.mark.parametrize('argv, best, command_has', [
    (['config/finetune_shakespeare.py', '--gpus=1', '--device_memory=24GB'],
     'LoRA rank 8, bfloat16 base', 'python train.py config/finetune_shakespeare.py --lora_rank=8'),
    (['config/finetune_shakespeare.py', '--gpus=1', '--device_memory=80GB'], 'DDP', 'python train.py '
                                                                                    'config/finetune_shakespeare.py'),
    (['config/finetune_shakespeare.py', '--gpus=2', '--device_memory=24GB'], 'FSDP', '--nproc_per_node=2'),
    (['config/finetune_shakespeare.py', '--gpus=8', '--device_memory=80GB'], 'DDP', '--nproc_per_node=8 train.py '
                                                                                    'config/finetune_shakespeare.py'),
    (['config/model_llama2_7b.py', '--batch_size=1', '--gradient_accumulation_steps=8', '--gpus=8',
      '--device_memory=80GB'], 'FSDP', 'train.py config/model_llama2_7b.py --batch_size=1'),
])
def test_sizing_plans_the_parallelism(argv, best, command_has):
    """The README's cases: GPT-2 XL finetuning on 1 x 24 GB (LoRA: full finetuning fits only with CPU offload),
    1 x 80 GB (full finetuning fits: no LoRA), 2 x 24 GB (FSDP),
    8 x 80 GB (DDP fits, the fastest); Llama-2-7B on 8 x 80 GB (FSDP). The command repeats the config file as given:
    relative to the repository, where the tests run."""
    config, model_config, errors = sizing.resolve_config(argv)
    report = sizing.sizing_report(config, model_config, errors, sizing.parse_memory(argv[-1].split('=')[1]), [],
                                  argv=argv)
    assert report['plan']['best'] == best
    assert command_has in report['plan']['command']


def manual_attention(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, enable_gqa=False):
    """nanoGPT's attention without flash: the T x T scores are materialized (causal, no dropout, no GQA)."""
    T = q.size(-2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
    att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float('-inf'))
    return F.softmax(att, dim=-1) @ v


def saved_bytes_per_layer_and_token(model_kwargs, bf16, T=16, lora_targets=None, lora_dropout=0.0):
    """Bytes of the distinct tensors autograd keeps for backward, per block and token, measured: the difference
    between 4 and 2 layers and between batch 4 and 2 cancels the parameters, their bf16 copies and the head.
    lora_targets: with rank-4 adapters on these, the base frozen in bf16."""
    def saved(n_layer, batch_size):
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layer=n_layer, block_size=T, vocab_size=64, **model_kwargs))
        if lora_targets:
            lora.add_adapters(model.train(), 4, 8.0, lora_dropout, lora_targets, torch.bfloat16)
        params = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        storages = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        idx = torch.randint(0, 64, (batch_size, T))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            model(idx, idx)
        return sum(storages.values())
    return ((saved(4, 4) - saved(4, 2)) - (saved(2, 4) - saved(2, 2))) / (2 * 2 * T)


@pytest.mark.parametrize('bf16', [True, False])
def test_activation_formula_is_what_autograd_keeps(bf16, monkeypatch):
    gpt2_like = dict(n_head=4, n_embd=64)
    config = GPTConfig(n_layer=2, block_size=16, vocab_size=64, **gpt2_like)
    act_bytes = 2 if bf16 else 4
    norm_statistics = 2 * 8  # mean and 1/std of each LayerNorm, fp32: left out of the formula
    assert saved_bytes_per_layer_and_token(gpt2_like, bf16) == \
        sizing.layer_activation_bytes(config, act_bytes, flash=True) + norm_statistics
    # without flash the T x T probabilities are kept: in fp32 from CUDA's autocast, which runs softmax in fp32, plus
    # their bf16 copy for the product with v; CPU's autocast runs softmax in bf16 and keeps only that
    cpu_softmax_in_bf16 = 4 * 4 * 16 if bf16 else 0  # 4 bytes x 4 heads x 16 keys
    monkeypatch.setattr(F, 'scaled_dot_product_attention', manual_attention)
    assert saved_bytes_per_layer_and_token(gpt2_like, bf16) == \
        sizing.layer_activation_bytes(config, act_bytes, flash=False) + norm_statistics - cpu_softmax_in_bf16


def test_activation_formula_for_llama_style_blocks():
    """RMSNorm, rotary, SwiGLU and grouped-query attention: the formula's terms are all kept; on CPU PyTorch
    also keeps the normalized output of its unfused rms_norm (fp32) and a copy of the attention output, which
    CUDA's fused kernels do not."""
    llama_like = dict(n_head=4, n_kv_head=2, n_embd=64, d_ff=96, norm='rmsnorm', pos_emb='rope', mlp='swiglu', bias=False)
    config = GPTConfig(n_layer=2, block_size=16, vocab_size=64, **llama_like)
    formula = sizing.layer_activation_bytes(config, 2, flash=True) + 2 * 4  # + the two norms' 1/rms
    cpu_extras = 2 * 4 * 64 + 2 * 64
    assert formula <= saved_bytes_per_layer_and_token(llama_like, bf16=True) <= formula + cpu_extras


def test_lora_memory_of_gpt2_xl_by_hand():
    """GPT-2 XL with rank-8 adapters on every target: per block r x (in + out) for c_attn (1600 + 4800), attn.c_proj
    (1600 + 1600), c_fc (1600 + 6400) and mlp.c_proj (6400 + 1600): 8 x 25,600 x 48 blocks; 18 bytes each (fp32
    weights, gradients, AdamW's moments, bf16 copies). The base: the blocks' matrices and biases (30,734,400 a block)
    in bf16, the embeddings and norms (82,360,000) in float32; the lm_head's bf16 copy; activations as full training's
    with rank-sized additions and without the lm_head's input."""
    argv = [f'{ROOT}/config/finetune_gpt2xl_lora.py']
    report = sizing.sizing_report(*sizing.resolve_config(argv), 24 * 10 ** 9, NO_DEVICES, argv=argv)
    m = report['memory']['lora']
    assert m['adapter_params'] == 8 * 25_600 * 48 == 9_830_400 and m['adapters'] == 18 * 9_830_400
    assert m['base'] == 2 * 48 * 30_734_400 + 4 * 82_360_000 == 3_279_942_400
    assert m['casts'] == 2 * 50257 * 1600 and m['base_dtype'] == 'bfloat16'
    per_token = report['memory']['activations']['per_token']
    assert m['per_token_layer'] == per_token['layer_mixed'] + 4 * 2 * 8
    assert m['activations'] == 1024 * (48 * m['per_token_layer'] + per_token['head_mixed'] - 2 * 1600)
    assert m['total'] == m['base'] + m['adapters'] + m['casts'] + m['activations'] and m['fits']
    plan = report['plan']  # asked for: the only row, with train.py's command as given
    assert [row['variant'] for row in plan['rows']] == ['LoRA rank 8, bfloat16 base'] and not plan['lora_instead']
    assert plan['command'] == f'python train.py {ROOT}/config/finetune_gpt2xl_lora.py'
    float32_base = report_for([f'{ROOT}/config/finetune_shakespeare.py', '--lora_rank=8', '--lora_base_dtype=float32'])
    assert float32_base['memory']['lora']['base'] == 4 * 1_557_611_200  # and autocast copies every matrix, kept
    assert float32_base['memory']['lora']['casts'] == 2 * (50257 * 1600 + 48 * (30_734_400 - 4800 - 1600 - 6400 - 1600))


@pytest.mark.parametrize('targets, dropout', [(lora.TARGETS, 0.0), (('attn.c_attn', 'attn.c_proj'), 0.0),
                                              (('mlp.c_fc', 'mlp.c_proj'), 0.1)])
def test_lora_activation_formula_is_what_autograd_keeps(targets, dropout):
    """With the base frozen, autograd keeps what the input gradients need: a frozen matrix's input only where an
    adapter reads it too; each adapter adds its A x (and with dropout its mask)."""
    gpt2_like = dict(n_head=4, n_embd=64)
    config = GPTConfig(n_layer=2, block_size=16, vocab_size=64, **gpt2_like)
    cfg = {**training.DEFAULTS, 'lora_rank': 4, 'lora_dropout': dropout,
           'lora_targets': ','.join(targets)}
    formula = sizing.lora_report(config, cfg, sizing.activation_report(config, 1))['per_token_layer']
    norm_statistics = 2 * 8  # as for full training: the LayerNorms' mean and 1/std, left out
    # CUDA's dropout keeps a 1-byte mask; CPU's keeps it in the input's dtype: c_fc's fp32 (the norm's output),
    # mlp.c_proj's bf16 (64 and 256 inputs)
    cpu_masks = (3 * 64 + 1 * 256) if dropout else 0
    assert saved_bytes_per_layer_and_token(gpt2_like, True, lora_targets=targets, lora_dropout=dropout) == \
        formula + norm_statistics + cpu_masks


def test_sizing_says_lora_fits_where_full_finetuning_does_not():
    result = run('sizing.py', '--init_from=gpt2-xl', '--batch_size=1', '--device_memory=24GB')
    assert result.returncode == 0, result.stderr
    assert 'LoRA (lora_rank=0 here: the plan would use it), rank 8' in result.stdout
    assert 'full finetuning does not fit without CPU offload: LoRA trains adapters on the frozen base instead' in \
        result.stdout
    assert 'fastest that fits: LoRA rank 8, bfloat16 base:  python train.py --init_from=gpt2-xl --batch_size=1 ' \
           '--lora_rank=8' in result.stdout


def test_compute_and_times():
    report = report_for(['--init_from=gpt2', '--batch_size=4', '--gradient_accumulation_steps=2', '--mfu=0.5'],
                        devices=[('H100', 989e12), ('unknown GPU', None)])
    compute = report['compute']
    n_matmul = 124_439_808 - 1024 * 768  # all but the position table; the tied wte multiplies as lm_head
    assert compute['matmul_params'] == n_matmul
    assert compute['training_per_token'] == 6 * n_matmul + 12 * 12 * 1024 * 768
    assert compute['forward_per_token'] == pytest.approx(compute['training_per_token'] / 3)
    assert compute['tokens_per_iter'] == 2 * 4 * 1024
    assert compute['training_per_iter'] == compute['training_per_token'] * 8192
    h100, unknown = compute['times']
    assert h100['per_iter_s'] == pytest.approx(compute['training_per_iter'] / (0.5 * 989e12))
    assert h100['per_billion_tokens_s'] == pytest.approx(1e9 * compute['training_per_token'] / (0.5 * 989e12))
    assert h100['chinchilla_s'] == pytest.approx(20 * 124_439_808 * compute['training_per_token'] / (0.5 * 989e12))
    assert unknown['per_iter_s'] is None
    assert compute['chinchilla_tokens'] == 20 * 124_439_808


def test_checklist_marks_design_problems_as_warnings():
    def statuses(argv):
        report = report_for(argv, device_memory=10 ** 12)
        assert report['ok']  # warnings do not fail the run
        return {x['check']: x['status'] for x in report['checklist']}
    assert set(statuses([f'{ROOT}/config/model_llama2_7b.py', '--batch_size=1', '--max_iters=1000000']).values()) == {'ok'}
    assert statuses(['--vocab_size=50257', '--batch_size=1'])['vocab'] == 'warning'  # not a multiple of 64
    assert statuses(['--init_from=gpt2', '--batch_size=1'])['vocab'] == 'ok'  # the same, but pretrained GPT-2 fixes it
    odd = statuses(['--n_layer=2', '--n_head=16', '--n_embd=1024', '--d_ff=1024', '--vocab_size=50304',
                    '--batch_size=1', '--max_iters=10'])
    assert odd == {'heads': 'ok', 'head size': 'ok', 'd_ff ratio': 'warning', 'vocab': 'ok',
                   'depth/width': 'warning', 'Chinchilla': 'warning', 'memory': 'ok'}
    assert statuses([f'{ROOT}/config/model_mini_gpt.py'])['head size'] == 'warning'  # 64 / 4 heads = 16
    # fine-tuning GPT-2 for a few iterations is not undertraining
    assert statuses(['--init_from=gpt2', '--batch_size=1', '--max_iters=20'])['Chinchilla'] == 'ok'


def test_resume_and_pretrained_fix_the_architecture_as_train_py_does(tmp_path):
    model_args = dict(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=100, norm='rmsnorm', bias=True)
    checkpoint.save({'model': {}, 'model_args': model_args}, str(tmp_path / 'ckpt.pt'))
    report = report_for(['--init_from=resume', f'--out_dir={tmp_path}', '--dropout=0.1'])
    expected = sum(p.numel() for p in GPT(GPTConfig(**model_args)).parameters())
    assert report['parameters']['total'] == expected
    assert (report['model']['n_layer'], report['model']['norm'], report['model']['dropout']) == (3, 'rmsnorm', 0.1)
    with pytest.raises(ValueError, match='n_layer=6 was asked for'):
        sizing.resolve_config(['--init_from=resume', f'--out_dir={tmp_path}', '--n_layer=6'])
    # a pretrained GPT-2: its context may be cropped, which shrinks the position table
    cropped = report_for(['--init_from=gpt2', '--block_size=256'])
    assert cropped['parameters']['total'] == 124_439_808 - (1024 - 256) * 768
    with pytest.raises(ValueError, match='n_head=8 was asked for'):
        sizing.resolve_config(['--init_from=gpt2-medium', '--n_head=8'])
    # a preset only sizing knows is a starting point: the command line changes it
    assert report_for([f'{ROOT}/config/model_tinyllama_1b.py', '--n_kv_head=8'])['model']['n_kv_head'] == 8


def test_vocab_comes_from_the_dataset_as_in_train_py(char_data):
    config, model_config, _ = sizing.resolve_config([f'--data_dir={char_data}'])
    assert config['vocab_size'] == model_config.vocab_size == 46  # make_text's characters
    report = report_for([f'--data_dir={char_data}', '--vocab_size=40'])
    assert not report['ok']
    assert [x['check'] for x in report['checklist']] == ['vocab']
    assert "vocab_size=40 is smaller than the dataset's 46 tokens" in report['checklist'][0]['message']
    assert sizing.resolve_config(['--dataset=no_such_dataset'])[1].vocab_size == 50304


def test_hugging_face_folder_is_sized_from_its_config_json(tmp_path):
    hf = dict(model_type='gpt2', n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=100)
    (tmp_path / 'config.json').write_text(json.dumps(hf))
    report = report_for([f'--init_from={tmp_path}'])
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=100, bias=True))
    assert report['parameters']['total'] == sum(p.numel() for p in model.parameters())


def test_parse_memory():
    assert sizing.parse_memory('80GB') == 80 * 10 ** 9
    assert sizing.parse_memory('24GiB') == 24 * 2 ** 30
    assert sizing.parse_memory('512MB') == 512 * 10 ** 6
    assert sizing.parse_memory('1.5 TiB') == int(1.5 * 2 ** 40)
    for bad in ('80', '80 gigs', 'GB', '-1GB'):
        with pytest.raises(ValueError, match='with a unit'):
            sizing.parse_memory(bad)
    with pytest.raises(ValueError, match='with a unit'):  # not configure's "expects str, got 80 (int)"
        sizing.main(['--device_memory=80'])


def test_json_output_is_the_report(capsys):
    sizing.main([f'{ROOT}/config/model_mini_gpt.py', '--json', '--device_memory=1GB', '--peak_flops=1e12'])
    report = json.loads(capsys.readouterr().out)
    assert report['ok'] and report['parameters']['total'] == 131_392
    assert report['memory']['device_memory'] == 10 ** 9
    assert [t['device'] for t in report['compute']['times']][:3] == ['A100', 'H100', 'H200']
    assert report['compute']['times'][3]['peak_flops'] == 1e12


def test_unknown_peak_gives_no_time_estimate(monkeypatch, capsys):
    """A device whose peak FLOP/s is unknown (a GPU missing from gpu_peak_flops.csv, MPS) shows no times."""
    monkeypatch.setattr(sizing.flops, 'peak_flops', lambda device, dtype: None)
    sizing.main([f'{ROOT}/config/model_mini_gpt.py', '--device_memory=1GB'])
    local = capsys.readouterr().out.split('this machine')[1].splitlines()[0]
    assert local.split() == ['(cpu)', 'unknown', '-', '-', '-']


def test_invalid_config_prints_checklist_errors_and_exits_nonzero():
    result = run('sizing.py', '--n_embd=100', '--n_head=12', '--norm=batchnorm', '--device_memory=1GB')
    assert_one_line_error(result, 'the config has 2 error(s)')
    errors = [l for l in result.stdout.splitlines() if l.strip().startswith('error')]
    assert len(errors) == 2
    assert any('n_embd=100 is not divisible by n_head=12' in l for l in errors)
    assert any("norm='batchnorm'" in l for l in errors)
    assert result.stderr.startswith('error: the config has 2 error(s)')
