"""
Export a checkpoint as a Hugging Face model folder (config.json + model.safetensors) that transformers
loads with from_pretrained and runs with the same logits.

    python export.py --out_dir=out --to=hf/
    python -c "from transformers import AutoModelForCausalLM as M; print(M.from_pretrained('hf/'))"

GPT-2-architecture models (LayerNorm, learned positions, GELU MLP, n_kv_head == n_head) become
GPT2LMHeadModel; Llama-style models (RMSNorm, rotary positions, SwiGLU, grouped-query attention or not)
become LlamaForCausalLM. Other mixes are refused: no Hugging Face architecture computes them.
No tokenizer files are written (see the README for the one to add).
"""

import json
import os
import sys

import torch
import torch.nn as nn

import common
from configurator import configure

DEFAULTS = dict(
    out_dir='out',  # the training run to export: out_dir/ckpt.pt
    to='',  # the folder to write the Hugging Face model to
    force=False,  # replace a config.json / model.safetensors already in `to`
)

GPT2_ARCH = dict(norm='layernorm', pos_emb='learned', mlp='gelu')
LLAMA_ARCH = dict(norm='rmsnorm', pos_emb='rope', mlp='swiglu')
GPT2_EOS = 50256  # <|endoftext|> of the GPT-2 BPE, which the project's BPE datasets use


def hf_layout(config):
    """'gpt2' or 'llama': the Hugging Face architecture that computes exactly what this model computes.
    A ValueError naming the options where the model departs from the nearer one when neither does."""
    gpt2_misses = [f'{k}={getattr(config, k)!r}' for k, v in GPT2_ARCH.items() if getattr(config, k) != v]
    if config.n_kv_head != config.n_head:
        gpt2_misses.append(f'n_kv_head={config.n_kv_head} (grouped-query attention)')
    llama_misses = [f'{k}={getattr(config, k)!r}' for k, v in LLAMA_ARCH.items() if getattr(config, k) != v]
    if not gpt2_misses:
        return 'gpt2'
    if not llama_misses:
        return 'llama'
    nearest, misses = ('GPT-2', gpt2_misses) if len(gpt2_misses) <= len(llama_misses) else ('Llama', llama_misses)
    raise ValueError("cannot export this model: Hugging Face's GPT-2 needs norm='layernorm', pos_emb='learned', "
                     "mlp='gelu' and n_kv_head == n_head, its Llama needs norm='rmsnorm', pos_emb='rope', "
                     f"mlp='swiglu'; this model is nearest to {nearest} but has {', '.join(misses)}, "
                     'which neither computes')


def gpt2_tensors(model):
    """The weights under GPT2LMHeadModel's names. Its Conv1D layers store (in, out), the transpose of nn.Linear;
    GPT-2 always has biases, and a model built with bias=False computes the same as one with zero biases."""
    t = model.transformer
    out = {'transformer.wte.weight': t.wte.weight, 'transformer.wpe.weight': t.wpe.weight}
    modules = {'transformer.ln_f': t.ln_f}
    for i, block in enumerate(t.h):
        for name in ('ln_1', 'attn.c_attn', 'attn.c_proj', 'ln_2', 'mlp.c_fc', 'mlp.c_proj'):
            modules[f'transformer.h.{i}.{name}'] = block.get_submodule(name)
    for name, module in modules.items():
        out[name + '.weight'] = module.weight.t() if isinstance(module, nn.Linear) else module.weight
        out[name + '.bias'] = module.weight.new_zeros(module.weight.size(0)) if module.bias is None else module.bias
    if not model.config.tie_embeddings:
        out['lm_head.weight'] = model.lm_head.weight  # an nn.Linear in GPT2LMHeadModel too: not transposed
    return out


def gpt2_config(config):
    eos = GPT2_EOS if config.vocab_size > GPT2_EOS else None
    return {
        'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2',
        'vocab_size': config.vocab_size, 'n_positions': config.block_size, 'n_embd': config.n_embd,
        'n_layer': config.n_layer, 'n_head': config.n_head, 'n_inner': config.d_ff,
        'activation_function': 'gelu_new', 'layer_norm_epsilon': 1e-5,
        'resid_pdrop': config.dropout, 'embd_pdrop': config.dropout, 'attn_pdrop': config.dropout,
        'tie_word_embeddings': config.tie_embeddings, 'bos_token_id': eos, 'eos_token_id': eos,
    }


def llama_tensors(model):
    """The weights under LlamaForCausalLM's names: c_attn split into q, k, v (no permutation: our rotary
    uses Llama's rotate_half layout) and the SwiGLU c_fc into gate and up."""
    c, t = model.config, model.transformer
    out = {'model.embed_tokens.weight': t.wte.weight, 'model.norm.weight': t.ln_f.weight}
    for i, block in enumerate(t.h):
        p = f'model.layers.{i}.'
        out[p + 'input_layernorm.weight'] = block.ln_1.weight
        out[p + 'post_attention_layernorm.weight'] = block.ln_2.weight
        for kind in ('weight', 'bias') if c.bias else ('weight',):
            q, k, v = getattr(block.attn.c_attn, kind).split(
                [c.n_head * c.head_size, c.n_kv_head * c.head_size, c.n_kv_head * c.head_size])
            gate, up = getattr(block.mlp.c_fc, kind).chunk(2)
            out.update({
                p + 'self_attn.q_proj.' + kind: q, p + 'self_attn.k_proj.' + kind: k, p + 'self_attn.v_proj.' + kind: v,
                p + 'self_attn.o_proj.' + kind: getattr(block.attn.c_proj, kind),
                p + 'mlp.gate_proj.' + kind: gate, p + 'mlp.up_proj.' + kind: up,
                p + 'mlp.down_proj.' + kind: getattr(block.mlp.c_proj, kind),
            })
    if not c.tie_embeddings:
        out['lm_head.weight'] = model.lm_head.weight
    return out


def llama_config(config):
    eos = GPT2_EOS if config.vocab_size > GPT2_EOS else None
    return {
        'architectures': ['LlamaForCausalLM'], 'model_type': 'llama',
        'vocab_size': config.vocab_size, 'hidden_size': config.n_embd, 'intermediate_size': config.d_ff,
        'num_hidden_layers': config.n_layer, 'num_attention_heads': config.n_head,
        'num_key_value_heads': config.n_kv_head, 'head_dim': config.head_size, 'hidden_act': 'silu',
        'max_position_embeddings': config.block_size, 'rms_norm_eps': 1e-5,
        'rope_theta': float(config.rope_theta),  # transformers 5 moves it into rope_parameters itself
        'attention_bias': config.bias, 'mlp_bias': config.bias, 'attention_dropout': config.dropout,
        'tie_word_embeddings': config.tie_embeddings, 'bos_token_id': eos, 'eos_token_id': eos,
    }


def export(model, folder, force=False):
    """Write `model` to `folder` as a Hugging Face model; returns the layout written ('gpt2' or 'llama').
    Files already there other than config.json and model.safetensors (a tokenizer, a README) are kept."""
    layout = hf_layout(model.config)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f'--to={folder} is a file: give a folder to write config.json and model.safetensors into')
    present = [n for n in ('config.json', 'model.safetensors') if os.path.exists(os.path.join(folder, n))]
    if present and not force:
        raise ValueError(f"{folder} already holds {' and '.join(present)}: pass --force=True to replace them, "
                         'or choose another --to folder')
    tensors, config = (gpt2_tensors(model), gpt2_config(model.config)) if layout == 'gpt2' else \
        (llama_tensors(model), llama_config(model.config))
    # safetensors wants each tensor in its own contiguous memory (views of c_attn and transposes are neither)
    tensors = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    config['torch_dtype'] = str(model.lm_head.weight.dtype).removeprefix('torch.')
    from safetensors.torch import save_file
    with common.atomic_path(os.path.join(folder, 'model.safetensors')) as tmp:
        save_file(tensors, tmp, metadata={'format': 'pt'})
    with common.atomic_path(os.path.join(folder, 'config.json')) as tmp:  # last: a config.json means complete weights
        with open(tmp, 'w') as f:
            json.dump(config, f, indent=2)
    return layout


def main():
    config = configure(DEFAULTS, sys.argv[1:])
    if not config['to']:
        raise ValueError('say where to write the Hugging Face folder: --to=FOLDER, '
                         'e.g. python export.py --out_dir=out --to=hf/')
    checkpoint = common.load_checkpoint(os.path.join(config['out_dir'], 'ckpt.pt'))
    model = common.model_from_checkpoint(checkpoint)
    layout = export(model, config['to'], config['force'])
    arch = {'gpt2': 'GPT2LMHeadModel', 'llama': 'LlamaForCausalLM'}[layout]
    print(f"wrote {os.path.join(config['to'], 'config.json')} and model.safetensors: a {arch} of "
          f"{model.get_num_params(non_embedding=False) / 1e6:.2f}M parameters")
    if model.config.vocab_size > GPT2_EOS:
        print("add the GPT-2 tokenizer: AutoTokenizer.from_pretrained('openai-community/gpt2')"
              f".save_pretrained({config['to']!r})")
    else:
        print('its vocabulary is not GPT-2\'s: transformers has no tokenizer for it; encode text with the '
              "dataset's meta.pkl (common.Tokenizer) and pass token ids")


if __name__ == '__main__':
    common.cli(main)
