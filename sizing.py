"""
Size a GPT before training it: parameters layer by layer, memory, FLOPs and the design checklist,
for the model a training config describes. The model is built on the meta device, so the counts
are exact and a 7B config costs nothing.

    python sizing.py config/train_gpt2.py
    python sizing.py --init_from=gpt2-xl --batch_size=1 --device_memory=24GiB
    python sizing.py config/model_llama2_7b.py --json
    python sizing.py config/finetune_shakespeare.py --gpus=2 --device_memory=24GB   # DDP or FSDP?

It reads the same config files and --key=value overrides as train.py, and takes the model from
init_from as train.py does (checkpoint.architecture): resume (out_dir/ckpt.pt), gpt2, gpt2-medium,
gpt2-large, gpt2-xl (config/model_gpt2*.py, so nothing is downloaded) or a Hugging Face folder or hub id
(GPT-2, Llama, Qwen2, Qwen3: its config.json only) fix the architecture; a model preset is a config file
(config/model_NAME.py: config/model_smollm2_135m.py, model_qwen3_0_6b.py, model_llama3_2_1b.py...). Its own keys:
  --json                 print the report as JSON
  --device_memory=80GB   memory to fit in: GB/MB are 10^9/10^6 bytes, GiB/MiB 2^30/2^20;
                         default: the visible GPU's, else this machine's RAM
  --mfu=0.4              model FLOPs utilization assumed for the time estimates
  --gpus=1               GPUs to train on: the plan gives the memory per GPU of DDP, FSDP, activation
                         checkpointing and CPU offload, and the command of the fastest that fits
and train.py's --peak_flops, this machine's peak FLOP/s: 0 looks up the GPU or measures the CPU (a GPU
missing from gpu_peak_flops.csv gets no time estimate).
The exit code is 1 when the checklist has an error.
"""

import json
import os
import re
import sys
from dataclasses import asdict

import torch

import checkpoint
import dataset
import flops
import lora
import machine
from configurator import cli, configure
from model import GPT
from training import DEFAULTS as TRAIN_DEFAULTS, TYPES_OF_NONE, setting_problems

DEFAULTS = dict(TRAIN_DEFAULTS, json=False, device_memory='', mfu=0.4, gpus=1)  # peak_flops: train.py's
LORA_SUGGESTED_RANK = 8  # the plan's LoRA run where the config asks for none and full finetuning does not fit
REFERENCE_GPUS = ('A100', 'H100', 'H200')
INVALID_MODEL = 'invalid GPTConfig: '  # how GPTConfig's ValueError begins; every problem follows, joined by '; '

# bytes per parameter held while training with AdamW (activations come on top)
TRAIN_BYTES_PER_PARAM = {
    'fp32': 16,  # weights 4 + gradients 4 + AdamW's two moments 4 + 4
    'mixed': 18,  # the same (torch.autocast keeps fp32 weights) + the bf16 weight copies autocast makes for the matmuls
}
CHINCHILLA_TOKENS_PER_PARAM = 20  # compute-optimal training (Hoffmann et al. 2022, https://arxiv.org/abs/2203.15556)

# ----------------------------------------------------------------------------------------------
# the config


def resolve_config(argv):
    """(config, model_config, errors) for argv. config: what train.py would run with, its model keys those of
    model_config, the GPTConfig that checkpoint.architecture decides as it does for train.py (None when it is
    invalid). errors: the checklist lines of every problem that would stop train.py. A config that asks to
    change the architecture of a checkpoint or of pretrained weights raises, as train.py does."""
    config = configure(DEFAULTS, argv, TYPES_OF_NONE)
    source = checkpoint.open_source(config['init_from'], config['out_dir'])  # reads no weights
    meta = dataset.load_meta(dataset.folder(config['dataset'], config['data_dir']))
    errors = run_errors(config)
    if source.model_args is None:
        try:
            checkpoint.vocab_size_for(config['vocab_size'], meta)
        except ValueError as e:
            errors.append(checklist_line('error', 'vocab', str(e)))
            config = config.replace(vocab_size=None)  # the dataset's, so that the model's other problems are listed
    try:
        model_config = checkpoint.architecture(config, meta, source)
    except ValueError as e:
        if not str(e).startswith(INVALID_MODEL):
            raise
        problems = str(e)[len(INVALID_MODEL):].split('; ')
        return config, None, errors + [checklist_line('error', 'model', problem) for problem in problems]
    return config.replace(**checkpoint.model_args(model_config, full=True)), model_config, errors


def run_errors(config):
    """The run's sizes that no training could use, as checklist lines."""
    return [checklist_line('error', 'run', problem)
            for problem in setting_problems(config, ('batch_size', 'gradient_accumulation_steps', 'max_iters'))]


def architecture_is_fixed(config):
    """Whether init_from dictates the architecture: a checkpoint to resume or pretrained weights."""
    return checkpoint.source_kind(config['init_from']) != 'scratch'


def checklist_line(status, check, message):
    return {'status': status, 'check': check, 'message': message}


# ----------------------------------------------------------------------------------------------
# parameters


COMPONENTS = [  # (key, label, inside each block)
    ('wte', 'token embedding (wte)', False),
    ('wpe', 'position embedding (wpe)', False),
    ('attn_q', 'attention query (c_attn)', True),
    ('attn_k', 'attention key (c_attn)', True),
    ('attn_v', 'attention value (c_attn)', True),
    ('attn_out', 'attention output (c_proj)', True),
    ('mlp_in', 'MLP in (c_fc)', True),
    ('mlp_out', 'MLP out (c_proj)', True),
    ('norms', 'norms (ln_1, ln_2; q_norm, k_norm)', True),
    ('ln_f', 'final norm (ln_f)', False),
    ('lm_head', 'output layer (lm_head)', False),
]
MODULE_COMPONENT = {'wte': 'wte', 'wpe': 'wpe', 'ln_1': 'norms', 'ln_2': 'norms', 'attn.q_norm': 'norms',
                    'attn.k_norm': 'norms', 'attn.c_proj': 'attn_out',
                    'mlp.c_fc': 'mlp_in', 'mlp.c_proj': 'mlp_out', 'ln_f': 'ln_f', 'lm_head': 'lm_head'}


def count_parameters(model):
    """Parameters by component, from the model's own tensors. A tied lm_head counts 0: named_parameters()
    yields the shared matrix once, as transformer.wte.weight."""
    c = model.config
    counts = {key: 0 for key, _, _ in COMPONENTS}
    for name, p in model.named_parameters():
        # 'transformer.h.3.attn.c_attn.bias' -> 'attn.c_attn', 'transformer.wte.weight' -> 'wte'
        module = re.sub(r'^transformer\.(h\.\d+\.)?', '', name).rsplit('.', 1)[0]
        if module == 'attn.c_attn':
            # one stacked Linear: rows are n_head query heads, then n_kv_head key heads, then n_kv_head value heads
            per_row = p.numel() // p.shape[0]
            counts['attn_q'] += c.n_head * c.head_size * per_row
            counts['attn_k'] += c.n_kv_head * c.head_size * per_row
            counts['attn_v'] += c.n_kv_head * c.head_size * per_row
        else:
            assert module in MODULE_COMPONENT, f'parameter {name} is in no component: add it to MODULE_COMPONENT'
            counts[MODULE_COMPONENT[module]] += p.numel()
    return counts


def parameter_report(model):
    c = model.config
    counts = count_parameters(model)
    total = sum(counts.values())
    assert total == sum(p.numel() for p in model.parameters()), 'the components do not add up to the model'
    rows = []
    for key, label, in_block in COMPONENTS:
        rows.append({'component': key, 'label': label, 'count': counts[key],
                     'per_block': counts[key] // c.n_layer if in_block else None,
                     'percent': 100 * counts[key] / total})
    blocks = sum(counts[key] for key, _, in_block in COMPONENTS if in_block)
    rule = 12 * c.n_layer * c.n_embd ** 2
    return {'rows': rows, 'total': total, 'blocks': blocks, 'rule_12Ld2': rule,
            'rule_vs_total_percent': 100 * (rule - total) / total,
            'rule_vs_blocks_percent': 100 * (rule - blocks) / blocks}


# ----------------------------------------------------------------------------------------------
# memory


def layer_activation_bytes(c, act_bytes, flash):
    """Bytes one block keeps for its backward pass, per token of a batch of block_size sequences.
    act_bytes is the size of a matmul input: 2 under bf16/fp16 autocast, 4 in fp32. Counted as
    Korthikanti et al. 2022 (https://arxiv.org/abs/2205.05198) do, for this model's tensors:
      8·d                the two norms' inputs: the residual stream, fp32 even under autocast
      2·d + q            the inputs of c_attn, mlp.c_fc and attn.c_proj (q = n_head·head_size, d unless set)
      q + 2·kv           q, k and v (kv = n_kv_head·head_size); rotary makes new q and k: + q + kv; qk_norm too
      2·d_ff, 4·d_ff     the MLP: GELU's input and output; SwiGLU's gate and up, silu(gate), their product
      4·n_head           flash attention: the softmax's log-sum-exp, fp32; it recomputes the T×T scores
      (4+2)·n_head·T     without flash: the T×T probabilities per head (fp32 softmax and its bf16 copy)
    and with dropout 1-byte masks: 2·d after attention and MLP, n_head·T on the probabilities without flash.
    The norms' statistics (4-8 bytes per norm) are left out."""
    d, h, T = c.n_embd, c.n_head, c.block_size
    q, kv = c.n_head * c.head_size, c.n_kv_head * c.head_size
    qkv = q + 2 * kv + (q + kv if c.pos_emb == 'rope' else 0) + (q + kv if c.qk_norm else 0)
    mlp = 2 * c.d_ff if c.mlp == 'gelu' else 4 * c.d_ff
    out = 8 * d + act_bytes * (2 * d + q + qkv + mlp)
    if flash:
        out += 4 * h
    else:
        out += (4 + act_bytes if act_bytes < 4 else 4) * h * T
    if c.dropout > 0:
        out += 2 * d + (0 if flash else (1 + act_bytes) * h * T)
    return out


def head_activation_bytes(c, act_bytes):
    """Bytes per token outside the blocks, at the start of the backward pass where they peak: the final
    norm's fp32 input and the lm_head's input; the logits (act_bytes each, held by the caller), the fp32
    log-softmax the loss keeps, its gradient and the fp32 gradient of the logits (4 + 4 + 4 per vocab entry);
    with dropout, the embeddings' mask."""
    d, V = c.n_embd, c.vocab_size
    return 4 * d + act_bytes * d + (act_bytes + 12) * V + (d if c.dropout > 0 else 0)


def activation_report(c, batch_size):
    """Activation memory of one forward/backward pass on batch_size x block_size tokens, eager PyTorch."""
    per_token = {
        'layer_fp32': layer_activation_bytes(c, 4, flash=True),
        'layer_mixed': layer_activation_bytes(c, 2, flash=True),
        'layer_mixed_no_flash': layer_activation_bytes(c, 2, flash=False),
        'layer_recompute': 4 * c.n_embd,  # torch.utils.checkpoint around each block keeps only its fp32 input
        'head_fp32': head_activation_bytes(c, 4),
        'head_mixed': head_activation_bytes(c, 2),
    }
    tokens, L = batch_size * c.block_size, c.n_layer
    return {
        'tokens': tokens,
        'per_token': per_token,
        'fp32': tokens * (L * per_token['layer_fp32'] + per_token['head_fp32']),
        'mixed': tokens * (L * per_token['layer_mixed'] + per_token['head_mixed']),
        'mixed_no_flash': tokens * (L * per_token['layer_mixed_no_flash'] + per_token['head_mixed']),
        # with recomputation the backward pass rebuilds one block's activations at a time
        'mixed_recompute': tokens * (L * per_token['layer_recompute'] + per_token['layer_mixed']
                                     + per_token['head_mixed']),
    }


def memory_report(c, n_params, batch_size, device_memory):
    kv_per_token = 2 * c.n_layer * c.n_kv_head * c.head_size * 2  # a key and a value per layer and key/value head, bf16
    activations = activation_report(c, batch_size)
    training = []
    for variant, state, act in (('fp32', 'fp32', 'fp32'), ('mixed precision (bf16 autocast)', 'mixed', 'mixed'),
                                ('mixed precision, no flash attention', 'mixed', 'mixed_no_flash'),
                                ('mixed precision, recomputation', 'mixed', 'mixed_recompute')):
        state_bytes = TRAIN_BYTES_PER_PARAM[state] * n_params
        total = state_bytes + activations[act]
        training.append({'variant': variant, 'bytes_per_param': TRAIN_BYTES_PER_PARAM[state], 'state': state_bytes,
                         'activations': activations[act], 'total': total, 'fits': total <= device_memory})
    inference = 2 * n_params + kv_per_token * c.block_size
    return {
        'device_memory': device_memory,
        'weights': {'fp32': 4 * n_params, 'bf16': 2 * n_params, 'int8': n_params},
        'kv_cache': {'bytes_per_token': kv_per_token, 'per_sequence': kv_per_token * c.block_size,
                     'batch': kv_per_token * c.block_size * batch_size},
        'inference_bf16': {'total': inference, 'fits': inference <= device_memory},
        'activations': activations,
        'training': training,
    }


def lora_report(c, config, activations):
    """Memory of a LoRA run (lora.py) in bf16 mixed precision, at the config's lora_rank (else LORA_SUGGESTED_RANK),
    for one process or each DDP process: the adapters' counts from the model itself (lora.add_adapters on the meta
    device).
      base         the frozen weights, stored once: the blocks' matrices in lora_base_dtype ('auto': bf16 under
                   autocast), the embeddings and norms in float32
      adapters     rank x (in + out) per target: fp32 weights 4 + gradients 4 + AdamW's two moments 8 + autocast's
                   bf16 copies 2 = 18 bytes each
      casts        autocast's bf16 copy of each float32 frozen matrix, kept from its forward to its backward (the
                   input's gradient needs it): the lm_head always, the blocks' matrices with a float32 base
      activations  full training's (layer_activation_bytes, head_activation_bytes): the gradient still flows back
                   through every frozen block to the adapters below, so nearly all of them stay; less what only
                   the frozen weights' own gradients needed: the bf16 input of each matrix that is no target
                   (c_attn's and c_fc's 2·d, mlp.c_proj's 2·d_ff; attn.c_proj's is kept by the attention anyway)
                   and of the lm_head (2·d); plus each adapter's rank-sized A x (2·rank), and with lora_dropout its
                   mask (in: CUDA keeps 1 byte, CPU the input's dtype)."""
    rank = config['lora_rank'] or LORA_SUGGESTED_RANK
    targets = [t.strip() for t in config['lora_targets'].split(',') if t.strip()]
    setting = config['lora_base_dtype']
    base_dtype = torch.bfloat16 if setting == 'auto' else getattr(torch, setting, None)
    if not isinstance(base_dtype, torch.dtype) or lora.target_problems(targets):
        return None  # train.py refuses the settings (its checklist names them)
    with torch.device('meta'):
        model = lora.add_adapters(GPT(c), rank, config['lora_alpha'], config['lora_dropout'], targets, base_dtype)
    adapters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    fp32_blocks = sum(p.numel() for name, p in model.named_parameters() if not p.requires_grad and p.dim() == 2
                      and name.startswith('transformer.h.') and p.dtype == torch.float32)
    casts = 2 * (c.vocab_size * c.n_embd + fp32_blocks)  # lm_head (tied or not) and float32 block matrices
    inputs = {'attn.c_attn': c.n_embd, 'attn.c_proj': c.n_head * c.head_size, 'mlp.c_fc': c.n_embd, 'mlp.c_proj': c.d_ff}
    not_kept = {'attn.c_attn': 2 * c.n_embd, 'attn.c_proj': 0, 'mlp.c_fc': 2 * c.n_embd, 'mlp.c_proj': 2 * c.d_ff}
    per_layer = activations['per_token']['layer_mixed'] - sum(not_kept[t] for t in lora.TARGETS if t not in targets) \
        + sum(2 * rank + (inputs[t] if config['lora_dropout'] > 0 else 0) for t in targets)
    per_head = activations['per_token']['head_mixed'] - 2 * c.n_embd
    act = activations['tokens'] * (c.n_layer * per_layer + per_head)
    n_params = sum(p.numel() for p in model.parameters())
    return {'rank': rank, 'targets': targets, 'base_dtype': str(base_dtype).removeprefix('torch.'),
            'adapter_params': adapters, 'adapter_percent': 100 * adapters / n_params, 'base': base,
            'adapters': 18 * adapters, 'casts': casts, 'per_token_layer': per_layer, 'per_token_head': per_head,
            'activations': act, 'total': base + 18 * adapters + casts + act, 'asked': bool(config['lora_rank'])}


# the ways to train on `gpus` GPUs, fastest first: (name, train.py's options, activations kept, state sharded,
# state in host memory). Activation checkpointing costs a third more compute; FSDP's gathers cost less than that
# on one node; CPU offload moves the optimizer step and every shard over PCIe at each step: the slowest.
PARALLEL_VARIANTS = [
    ('DDP', '', 'mixed', False, False),
    ('FSDP', '--parallel=fsdp', 'mixed', True, False),
    ('DDP + activation checkpointing', '--activation_checkpointing=True', 'mixed_recompute', False, False),
    ('FSDP + activation checkpointing', '--parallel=fsdp --activation_checkpointing=True', 'mixed_recompute', True,
     False),
    ('FSDP + CPU offload + activation checkpointing',
     '--parallel=fsdp --cpu_offload=True --activation_checkpointing=True', 'mixed_recompute', True, True),
]


def parallel_plan(report, config, gpus, device_memory, train_args):
    """Memory per GPU of each PARALLEL_VARIANTS entry, in bf16 mixed precision, for config's batch on `gpus`
    GPUs, and the fastest that fits, as a command with `train_args`. Per GPU, with P parameters (Pr outside the
    blocks, Pb in one block):
      DDP    16·P (fp32 weights, gradients, AdamW's two moments) + 2·P (autocast's bf16 weight copies),
             + 4·P on more than one GPU (DDP reduces the gradients from buckets of their own), + activations
      FSDP   16·P / gpus (the same state, sharded) + 2·(Pr + 2·Pb) (the bf16 parameters gathered: the root unit,
             the block computing and the next, prefetched) + 4·Pb (one block's fp32 gradients before they are
             reduce-scattered), + 4·P when a process runs several micro-steps per step (FSDP accumulates their
             gradients unsharded in fp32 until the last one syncs), + activations
      CPU offload keeps the 16·P / gpus in host memory instead."""
    n_params = report['parameters']['total']
    blocks, layers = report['parameters']['blocks'], report['model']['n_layer']
    per_block, root = blocks // layers, n_params - blocks
    micro_steps = config['gradient_accumulation_steps'] // gpus
    accumulated = 4 * n_params if micro_steps > 1 else 0
    gathered = 2 * (root + 2 * per_block) + 4 * per_block
    activations = report['memory']['activations']
    lora_memory = report['memory']['lora']
    rows = []
    for name, options, kept, is_sharded, offload in [] if config['lora_rank'] else PARALLEL_VARIANTS:
        if is_sharded and gpus == 1 and not offload:
            continue  # FSDP on one GPU shards nothing
        if is_sharded:  # FSDP's fp32 shards: weights, gradients and moments, no autocast copies (mp_policy casts)
            state = TRAIN_BYTES_PER_PARAM['fp32'] * n_params / gpus
        else:
            state = TRAIN_BYTES_PER_PARAM['mixed'] * n_params + (4 * n_params if gpus > 1 else 0)
        host = state if offload else 0
        total = (0 if offload else state) + (gathered + accumulated if is_sharded else 0) + activations[kept]
        rows.append({'variant': name, 'options': options, 'state': state, 'host_per_process': host,
                     'activations': activations[kept], 'total': total, 'fits': total <= device_memory})
    if lora_memory:  # a LoRA run, or the finetuning that fits where full finetuning needs CPU offload or no longer fits
        state = lora_memory['total'] - lora_memory['activations'] + (4 * lora_memory['adapter_params'] if gpus > 1 else 0)
        row = {'variant': f"LoRA rank {lora_memory['rank']}, {lora_memory['base_dtype']} base", 'state': state,
               'options': '' if lora_memory['asked'] else f"--lora_rank={lora_memory['rank']}",
               'host_per_process': 0, 'activations': lora_memory['activations'],
               'total': state + lora_memory['activations'], 'fits': state + lora_memory['activations'] <= device_memory}
        rows.insert(next((i for i, r in enumerate(rows) if r['host_per_process']), len(rows)), row)
    best = next((row for row in rows if row['fits']), None)
    problem = None
    if config['gradient_accumulation_steps'] % gpus:
        problem = (f"gradient_accumulation_steps={config['gradient_accumulation_steps']} is not a multiple of "
                   f'{gpus} GPUs: train.py refuses it')
    command = None
    if best:
        launch = 'python' if gpus == 1 and 'fsdp' not in best['options'] else \
            f'torchrun --standalone --nproc_per_node={gpus}'
        command = ' '.join(x for x in [launch, 'train.py', *train_args, best['options']] if x)
    lora_instead = bool(best and lora_memory and not lora_memory['asked'] and best['variant'].startswith('LoRA'))
    return {'gpus': gpus, 'micro_steps_per_gpu': micro_steps, 'rows': rows, 'best': best and best['variant'],
            'command': command, 'problem': problem, 'lora_instead': lora_instead}


def config_args(argv):
    """The config files and train.py keys of sizing's command line: what the plan's command repeats."""
    return [arg for arg in argv if not arg.startswith(('--json', '--device_memory', '--mfu', '--gpus'))]


def parse_memory(text):
    """'80GB' -> 80·10^9 bytes, '24GiB' -> 24·2^30 bytes."""
    units = {'B': 1, 'KB': 10 ** 3, 'MB': 10 ** 6, 'GB': 10 ** 9, 'TB': 10 ** 12,
             'KIB': 2 ** 10, 'MIB': 2 ** 20, 'GIB': 2 ** 30, 'TIB': 2 ** 40}
    match = re.fullmatch(r'\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]+)\s*', text)
    if not match or match.group(2).upper() not in units or float(match.group(1)) <= 0:
        raise ValueError(f'device_memory={text!r} is not a memory size: write it with a unit, '
                         'e.g. --device_memory=80GB (10^9 bytes) or --device_memory=24GiB (2^30 bytes)')
    return int(float(match.group(1)) * units[match.group(2).upper()])


def visible_device_memory():
    """(bytes, where from): the current GPU's memory, else this machine's RAM."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return props.total_memory, props.name
    if not hasattr(os, 'sysconf'):
        raise ValueError("cannot read this machine's memory size here: pass it, e.g. --device_memory=16GB")
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'), "this machine's RAM (no GPU visible)"


# ----------------------------------------------------------------------------------------------
# compute


def compute_report(model, config, mfu, devices):
    """FLOPs and times at `mfu` on `devices` [(name, peak FLOP/s or None)]."""
    c = model.config
    training_per_token = model.flops_per_token(c.block_size)
    attention_per_token = 12 * c.n_layer * c.block_size * c.n_embd
    tokens_per_iter = config['gradient_accumulation_steps'] * config['batch_size'] * c.block_size
    per_iter = training_per_token * tokens_per_iter
    chinchilla_tokens = CHINCHILLA_TOKENS_PER_PARAM * sum(p.numel() for p in model.parameters())
    times = []
    for name, peak in devices:
        rate = peak * mfu if peak else None
        times.append({'device': name, 'peak_flops': peak,
                      'per_iter_s': per_iter / rate if rate else None,
                      'per_billion_tokens_s': 1e9 * training_per_token / rate if rate else None,
                      'chinchilla_s': chinchilla_tokens * training_per_token / rate if rate else None})
    return {
        'matmul_params': model.get_num_params(non_embedding=True),
        'forward_per_token': training_per_token / 3,
        'training_per_token': training_per_token,
        'attention_per_token': attention_per_token,
        'tokens_per_iter': tokens_per_iter,
        'training_per_iter': per_iter,
        'chinchilla_tokens': chinchilla_tokens,
        'mfu': mfu,
        'times': times,
    }


def local_device(peak_flops=0.0):
    """(name, peak FLOP/s or None when unknown: a GPU missing from gpu_peak_flops.csv, MPS) of the visible
    device; a CPU's is measured (~0.1 s)."""
    device = machine.resolve_device('auto')
    name = machine.device_name(device) if device == 'cuda' else f'this machine ({device})'
    return name, peak_flops or flops.peak_flops(device, machine.resolve_dtype('auto', device))


# ----------------------------------------------------------------------------------------------
# the checklist


def design_checklist(c, config, memory, compute):
    """The validation checklist of a valid model: each line ok or warning, with why."""
    out = []

    def add(status, check, message):
        out.append(checklist_line(status, check, message))

    if c.n_head * c.head_size == c.n_embd:
        add('ok', 'heads', f'n_embd {c.n_embd} = {c.n_head} heads x {c.head_size}: every head gets an equal slice')
    else:
        add('ok', 'heads', f'{c.n_head} heads x {c.head_size} = {c.n_head * c.head_size}, not n_embd {c.n_embd}: '
            'head_size is set, as in Qwen3')
    if c.head_size in (64, 128):
        add('ok', 'head size', f'{c.head_size}, as GPT-2 (64) and Llama (128): the sizes attention kernels are tuned for')
    else:
        fixes = [f'n_head={c.n_embd // size}' for size in (64, 128) if c.n_embd % size == 0]
        fix = ' or '.join(fixes) if fixes else 'n_embd a multiple of 64 and n_head = n_embd/64'
        add('warning', 'head size', f'{c.head_size}: nearly all models use 64 or 128, the sizes flash-attention kernels '
            f'are tuned for; {fix} gives one')
    usual = 4 if c.mlp == 'gelu' else 8 / 3  # SwiGLU has three matrices: 8/3·d keeps the parameters of a 4·d GELU MLP
    ratio = c.d_ff / c.n_embd
    why = f"d_ff {c.d_ff} = {ratio:.2f} x n_embd; the usual {c.mlp} ratio is {usual:.2f} ({'GPT-2' if c.mlp == 'gelu' else 'Llama'})"
    if 0.75 <= ratio / usual <= 1.25:
        add('ok', 'd_ff ratio', why)
    else:
        suggested = round(usual * c.n_embd / 64) * 64 or round(usual * c.n_embd)  # a multiple of 64 unless tiny
        add('warning', 'd_ff ratio', f'{why}: other ratios are rarely used; --d_ff={suggested} is close to it')
    if c.vocab_size % 64 == 0:
        add('ok', 'vocab', f'{c.vocab_size} is a multiple of 64, a shape GPU matmuls run fastest on')
    elif architecture_is_fixed(config):
        add('ok', 'vocab', f"{c.vocab_size} is not a multiple of 64, which slows the embedding and lm_head matmuls a little, "
            f"but {config['init_from']} fixes it")
    else:
        add('warning', 'vocab', f'{c.vocab_size} is not a multiple of 64: --vocab_size={dataset.padded_vocab(c.vocab_size)} makes '
            'the embedding and lm_head matmuls faster (nanoGPT pads 50257 to 50304); the extra rows are never used')
    aspect = c.n_embd / c.n_layer
    if 16 <= aspect <= 256:
        add('ok', 'depth/width', f'n_embd/n_layer = {aspect:.0f}, within 16-256 like published models (GPT-2 XL 33, Llama-2 128)')
    else:
        add('warning', 'depth/width', f"n_embd/n_layer = {aspect:.0f}, too {'shallow' if aspect > 256 else 'deep'} for its "
            'width: published models keep it within 16-256 (GPT-2 XL 33, Llama-2 128); far outside, the same parameters '
            'reach a worse loss (Kaplan et al. 2020, figure 5)')
    planned, optimal = config['max_iters'] * compute['tokens_per_iter'], compute['chinchilla_tokens']
    tokens = (f'{CHINCHILLA_TOKENS_PER_PARAM} tokens per parameter = {human(optimal)} tokens; this run trains {human(planned)} '
              f"(max_iters {config['max_iters']} x {compute['tokens_per_iter']:,} tokens per iteration)")
    if planned >= optimal:
        add('ok', 'Chinchilla', tokens)
    elif architecture_is_fixed(config) and config['init_from'] != 'resume':
        add('ok', 'Chinchilla', tokens + ', fine-tuning pretrained weights')
    else:
        add('warning', 'Chinchilla', tokens + ': undertrained; a smaller model would reach a lower loss with the same compute')
    mixed, recompute = memory['training'][1], memory['training'][3]
    need = f"mixed-precision training needs {human_bytes(mixed['total'])}"
    if mixed['fits']:
        add('ok', 'memory', f"{need}, within {human_bytes(memory['device_memory'])}")
    elif recompute['fits']:
        add('warning', 'memory', f"{need}, more than {human_bytes(memory['device_memory'])}; with activation recomputation "
            f"{human_bytes(recompute['total'])}, or lower batch_size and raise gradient_accumulation_steps")
    else:
        add('warning', 'memory', f"{need}, more than {human_bytes(memory['device_memory'])} even with recomputation: lower "
            'batch_size, or shard the weights and optimizer across GPUs (FSDP)')
    return out


# ----------------------------------------------------------------------------------------------
# the report


def sizing_report(config, model_config, errors, device_memory, devices, device_memory_source='--device_memory',
                  argv=()):
    """Everything sizing.py prints, as a dict, for resolve_config's (config, model_config, errors) from the command
    line `argv`; only the checklist when there are errors."""
    if errors:
        return {'ok': False, 'checklist': errors}
    with torch.device('meta'):  # no memory: the parameters have shapes but no data
        model = GPT(model_config)
    c = model.config
    parameters = parameter_report(model)
    memory = memory_report(c, parameters['total'], config['batch_size'], device_memory)
    memory['device_memory_source'] = device_memory_source
    finetuning = architecture_is_fixed(config) and config['init_from'] != 'resume'  # LoRA adapts pretrained weights
    memory['lora'] = lora_report(c, config, memory['activations']) if config['lora_rank'] or finetuning else None
    if memory['lora']:
        memory['lora']['fits'] = memory['lora']['total'] <= device_memory
    compute = compute_report(model, config, config['mfu'], devices)
    run = {k: config[k] for k in ('init_from', 'batch_size', 'gradient_accumulation_steps', 'max_iters')}
    report = {'ok': True, 'model': asdict(c), 'run': run, 'parameters': parameters, 'memory': memory,
              'compute': compute, 'checklist': design_checklist(c, config, memory, compute)}
    report['plan'] = parallel_plan(report, config, config['gpus'], device_memory, config_args(argv))
    return report


def human(n):
    for unit, size in (('T', 1e12), ('B', 1e9), ('M', 1e6), ('K', 1e3)):
        if n >= size:
            return f'{n / size:.3g}{unit}'
    return f'{n:.3g}'


def human_bytes(n):
    for unit, size in (('TB', 1e12), ('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if n >= size:
            return f'{n / size:.2f} {unit}'
    return f'{n} B'


def human_flops(n):
    for unit, size in (('PFLOP', 1e15), ('TFLOP', 1e12), ('GFLOP', 1e9), ('MFLOP', 1e6), ('kFLOP', 1e3)):
        if n >= size:
            return f'{n / size:.3g} {unit}'
    return f'{n:.3g} FLOP'


def human_time(seconds):
    if seconds is None:
        return '-'
    for unit, size in (('years', 365 * 86400), ('days', 86400), ('h', 3600), ('min', 60), ('s', 1), ('ms', 1e-3)):
        if seconds >= size:
            return f'{seconds / size:,.0f} {unit}' if seconds >= 1000 * size else f'{seconds / size:.3g} {unit}'
    return f'{seconds * 1e6:.3g} us'


def above_or_below(percent):
    return f"{abs(percent):.1f}% {'below' if percent < 0 else 'above'}"


def format_report(report):
    out = []
    if report['ok']:
        for section in (format_model, format_parameters, format_memory, format_plan, format_compute):
            out += section(report) + ['']
    out.append('checklist')
    out += [f"  {x['status']:<8} {x['check']:<12} {x['message']}" for x in report['checklist']]
    return '\n'.join(out)


def format_model(report):
    c, run = report['model'], report['run']
    kv = '' if c['n_kv_head'] == c['n_head'] else f", {c['n_kv_head']} key/value heads"
    init = '' if run['init_from'] == 'scratch' else f", init_from {run['init_from']}"
    return [f"model: {c['n_layer']} layers, n_embd {c['n_embd']}, {c['n_head']} heads of {c['head_size']}{kv}, "
            f"d_ff {c['d_ff']}, vocab {c['vocab_size']}, context {c['block_size']}",
            f"  {c['norm']}, {'rotary' if c['pos_emb'] == 'rope' else 'learned'} positions, {c['mlp']} MLP, "
            f"{'biases' if c['bias'] else 'q/k/v biases' if c['qkv_bias'] else 'no biases'}{', q/k norms' if c['qk_norm'] else ''}"
            f"{', Llama 3 rope scaling' if c['rope_scaling'] else ''}, {'tied' if c['tie_embeddings'] else 'untied'} embeddings{init}"]


def format_parameters(report):
    c, p = report['model'], report['parameters']
    notes = {'wpe': 'rotary: no parameters' if c['pos_emb'] == 'rope' else '',
             'lm_head': 'tied: it is wte' if c['tie_embeddings'] else '',
             'mlp_in': 'gate and up' if c['mlp'] == 'swiglu' else ''}
    out = [f"{'parameters':<34}{'per block':>12}{'total':>16}{'%':>8}"]
    for row in p['rows']:
        per_block = f"{row['per_block']:,}" if row['per_block'] is not None else ''
        note = notes.get(row['component'], '')
        out.append(f"  {row['label']:<32}{per_block:>12}{row['count']:>16,}{row['percent']:>7.1f}%{'  ' + note if note else ''}")
    out.append(f"  {'total':<32}{'':>12}{p['total']:>16,}{100:>7.1f}%")
    out.append(f"  12·L·d² = {p['rule_12Ld2']:,}: {above_or_below(p['rule_vs_total_percent'])} the total (it leaves out "
               f"the embeddings), {above_or_below(p['rule_vs_blocks_percent'])} the {c['n_layer']} blocks' {p['blocks']:,}")
    return out


def format_memory(report):
    c, run, m = report['model'], report['run'], report['memory']
    a, kv, per_token = m['activations'], m['kv_cache'], m['activations']['per_token']

    def fits(ok):
        return 'fits' if ok else 'does not fit'

    out = [f"memory (GB = 10^9 bytes), device memory {human_bytes(m['device_memory'])} ({m['device_memory_source']})",
           f"  inference weights: fp32 {human_bytes(m['weights']['fp32'])}, bf16 {human_bytes(m['weights']['bf16'])}, "
           f"int8 {human_bytes(m['weights']['int8'])}",
           f"  KV cache, bf16, full context ({c['block_size']} tokens): {human_bytes(kv['per_sequence'])} per sequence "
           f"({kv['bytes_per_token']:,} bytes per token), {human_bytes(kv['batch'])} for batch_size {run['batch_size']}",
           f"  inference in bf16, weights + one sequence's KV cache: {human_bytes(m['inference_bf16']['total'])}, "
           f"{fits(m['inference_bf16']['fits'])}",
           f"  training with AdamW on batch_size {run['batch_size']} x block_size {c['block_size']} = {a['tokens']:,} tokens:",
           f"    {'':<38}{'bytes/param':>12}{'state':>12}{'activations':>13}{'total':>12}"]
    for t in m['training']:
        out.append(f"    {t['variant']:<38}{t['bytes_per_param']:>12}{human_bytes(t['state']):>12}"
                   f"{human_bytes(t['activations']):>13}{human_bytes(t['total']):>12}  {fits(t['fits'])}")
    out += ['  state: fp32 weights 4 + gradients 4 + AdamW moments 4 + 4 bytes/param; under autocast + 2 for the bf16 '
            'weight copies',
            f"  activations per token, mixed precision: {per_token['layer_mixed']:,} bytes per layer with flash attention, "
            f"{per_token['layer_mixed_no_flash']:,} without (the T x T probabilities),",
            f"    {per_token['layer_recompute']:,} with recomputation (each block's fp32 input; one block rebuilt at a time), "
            f"and {per_token['head_mixed']:,} for the logits and loss",
            '    (14 bytes per vocab entry at the start of backward); counted as Korthikanti et al. 2022 do, for this '
            "model's tensors in eager PyTorch"]
    lm = m['lora']
    if lm:
        out += [f"  LoRA{'' if lm['asked'] else ' (lora_rank=0 here: the plan would use it)'}, rank {lm['rank']} on "
                f"{', '.join(lm['targets'])}: {lm['adapter_params']:,} parameters train ({lm['adapter_percent']:.2f}%), "
                f"the base is frozen in {lm['base_dtype']}, bf16 autocast:",
                f"    frozen base {human_bytes(lm['base'])} + adapters with gradients and AdamW (18 bytes each) "
                f"{human_bytes(lm['adapters'])} + autocast's copies of fp32 frozen matrices {human_bytes(lm['casts'])}",
                f"    + activations {human_bytes(lm['activations'])} ({lm['per_token_layer']:,} bytes per layer and token: "
                "the gradient still crosses every frozen block) = "
                f"{human_bytes(lm['total'])}, {fits(lm['fits'])}"]
    return out


def format_plan(report):
    plan, m = report['plan'], report['memory']
    out = [f"plan: {plan['gpus']} GPU(s) of {human_bytes(m['device_memory'])}, bf16 mixed precision, "
           f"{plan['micro_steps_per_gpu']} micro-step(s) per GPU and step; memory per GPU, fastest first",
           f"    {'':<46}{'state':>11}{'activations':>13}{'total':>11}"]
    for row in plan['rows']:
        host = f", state in host memory: {human_bytes(row['host_per_process'])} per GPU" if row['host_per_process'] else ''
        out.append(f"    {row['variant']:<46}{human_bytes(row['state']):>11}{human_bytes(row['activations']):>13}"
                   f"{human_bytes(row['total']):>11}  {'fits' if row['fits'] else 'does not fit'}{host}")
    if plan['problem']:
        out.append(f"  note: {plan['problem']}")
    if plan['lora_instead']:
        out.append('  full finetuning does not fit' + (' without CPU offload' if any(r['host_per_process'] for r in plan['rows'] if r['fits'])
                                                     else '') + ': LoRA trains adapters on the frozen base instead')
    if plan['command']:
        out.append(f"  fastest that fits: {plan['best']}:  {plan['command']}")
    else:
        out.append('  nothing fits: more GPUs (--gpus), a smaller batch_size (raise gradient_accumulation_steps) '
                   'or a smaller model')
    return out


def format_compute(report):
    c, run, f = report['model'], report['run'], report['compute']
    out = [f"compute: forward+backward {human_flops(f['training_per_token'])} per token = 6·N + 12·L·T·d "
           f"(N = {f['matmul_params']:,} parameters in matmuls, T = {c['block_size']};",
           f"  attention {human_flops(f['attention_per_token'])}, PaLM appendix B); forward a third: "
           f"{human_flops(f['forward_per_token'])} per token",
           f"  per iteration: {f['tokens_per_iter']:,} tokens (gradient_accumulation_steps {run['gradient_accumulation_steps']} "
           f"x batch_size {run['batch_size']} x block_size {c['block_size']}), {human_flops(f['training_per_iter'])}",
           f"  one device at {f['mfu']:.0%} MFU{'':<9}{'peak':>14}{'per iteration':>15}{'per 1B tokens':>15}{'20 tokens/param':>17}"]
    for t in f['times']:
        peak = human_flops(t['peak_flops']) + '/s' if t['peak_flops'] else 'unknown'
        out.append(f"    {t['device']:<26}{peak:>14}{human_time(t['per_iter_s']):>15}"
                   f"{human_time(t['per_billion_tokens_s']):>15}{human_time(t['chinchilla_s']):>17}")
    return out


def main(argv=None):
    argv = ['--json=True' if a == '--json' else a for a in (sys.argv[1:] if argv is None else argv)]
    for arg in argv:
        if arg.startswith('--device_memory=') and arg.partition('=')[2]:
            parse_memory(arg.partition('=')[2])  # before configure, which would take a bare 80 for a number
    config, model_config, errors = resolve_config(argv)
    problems = setting_problems(config, ('peak_flops',))
    if not 0 < config['mfu'] <= 1:
        problems.append(f"mfu={config['mfu']} must be in (0, 1]: 0.4 is a good run on A100/H100")
    if config['gpus'] < 1:
        problems.append(f"gpus={config['gpus']} must be at least 1")
    if problems:
        raise ValueError('; '.join(problems))
    if config['device_memory']:
        device_memory, source = parse_memory(config['device_memory']), '--device_memory'
    else:
        device_memory, source = visible_device_memory()
    devices = [(name, dict(flops.GPU_PEAK_FLOPS)[name]) for name in REFERENCE_GPUS]
    if not errors:  # measuring the CPU takes a moment: only for a model that will be sized
        devices.append(local_device(config['peak_flops']))
    report = sizing_report(config, model_config, errors, device_memory, devices, source, argv)
    print(json.dumps(report, indent=2) if config['json'] else format_report(report))
    if not report['ok']:
        raise ValueError(f"the config has {len(report['checklist'])} error(s), listed in the checklist above")


if __name__ == '__main__':
    cli(main)
