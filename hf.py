"""
Hugging Face in both directions: OpenAI's GPT-2 and Hugging Face GPT-2 folders read into a GPT
(gpt2_args, gpt2_weight_files, gpt2_state_dict), and a GPT written as a Hugging Face folder that transformers loads
(export_hf): GPT2LMHeadModel for GPT-2-architecture models, LlamaForCausalLM for Llama-style ones.

    args = hf.gpt2_args('gpt2')                                      # GPTConfig's arguments
    weights = hf.gpt2_state_dict(hf.gpt2_weight_files('gpt2'))       # downloads from the hub, or reads its cache
    hf.export_hf(model, 'hf/')                                       # config.json + model.safetensors
"""

import contextlib
import json
import os

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from atomic import atomic_path, inside
from configurator import one_line, read_config_file

PRETRAINED = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')

# ----------------------------------------------------------------------------------------------
# reading


def is_pretrained(init_from):
    """Whether init_from names pretrained weights this module reads: a GPT-2 name or a local folder."""
    return init_from in PRETRAINED or os.path.isdir(init_from)


def gpt2_args(name_or_path):
    """The GPTConfig arguments of a GPT-2 name (its preset, config/model_NAME.py: nothing is downloaded) or of a
    Hugging Face GPT-2 folder (its config.json)."""
    if name_or_path in PRETRAINED:
        preset = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config',
                              f"model_{name_or_path.replace('-', '_')}.py")
        return read_config_file(preset, {})
    config_file = os.path.join(name_or_path, 'config.json')
    if not os.path.isfile(config_file):
        raise ValueError(f'{name_or_path} is not a Hugging Face GPT-2 folder: it needs config.json and '
                         "model.safetensors (or pytorch_model.bin), as transformers' save_pretrained writes them")
    return gpt2_args_from_hf(read_json(config_file, 'a JSON object of settings'), config_file)


def read_json(path, what):
    """The JSON object (dict) in path, or a ValueError naming the file."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f'{path} is unreadable ({one_line(e, 150)}): save the folder again') from None
    if not isinstance(value, dict):
        raise ValueError(f'{path} holds a {type(value).__name__}, not {what}: save the folder again')
    return value


def gpt2_state_dict(weight_files):
    """The weights of a Hugging Face GPT-2 (safetensors, or pytorch_model.bin read without running code) under
    GPT's names, in the files' dtype."""
    hf_sd = {}
    for path in weight_files:
        try:
            tensors = load_file(path) if path.endswith('.safetensors') else \
                torch.load(path, map_location='cpu', weights_only=True)  # weights_only: a planted pickle runs nothing
            if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
                raise ValueError('it is not a dict of tensors')
            hf_sd.update(tensors)
        except Exception as e:
            raise ValueError(f'{path} is unreadable or corrupt ({one_line(e, 150)}): download or save it again') from None
    # Hugging Face names, less the 'transformer.' prefix that GPT2LMHeadModel adds and GPT2Model (OpenAI's
    # hub files) lacks; its Conv1D layers store weights as (in, out), nn.Linear as (out, in)
    conv1d = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
    weights = {}
    for k, v in hf_sd.items():
        k = k.removeprefix('transformer.')
        if not k.endswith(('.attn.bias', '.attn.masked_bias')):  # the causal-mask buffers of old checkpoints
            weights[k if k == 'lm_head.weight' else 'transformer.' + k] = v.t() if k.endswith(conv1d) else v
    return weights


def gpt2_weight_files(name_or_path):
    """The weight files of OpenAI's GPT-2 `name` (hub or cache) or of a local Hugging Face folder."""
    if name_or_path in PRETRAINED:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
        files = ('model.safetensors',)  # the architecture is the preset's (gpt2_args)
        try:
            paths = [hf_hub_download(f'openai-community/{name_or_path}', f) for f in files]
        except Exception as e:
            try:  # a cache filled under the old repo name, e.g. by transformers' from_pretrained('gpt2')
                paths = [hf_hub_download(name_or_path, f, local_files_only=True) for f in files]
            except Exception:
                reason = 'no network or HF_HUB_OFFLINE=1, and not in the Hugging Face cache' \
                    if isinstance(e, LocalEntryNotFoundError) else one_line(e, 150)
                raise OSError(f'could not download {name_or_path} ({reason}): put a Hugging Face GPT-2 folder '
                              f'(config.json + model.safetensors of openai-community/{name_or_path}) here and pass '
                              'its path instead, or fill the Hugging Face cache on a machine with internet (`hf download '
                              f'openai-community/{name_or_path} config.json model.safetensors`) and copy it here '
                              '(~/.cache/huggingface, or $HF_HOME)') from None
        return paths
    config_file = os.path.join(name_or_path, 'config.json')
    index = os.path.join(name_or_path, 'model.safetensors.index.json')
    if os.path.isfile(index):  # sharded: the index maps each tensor to its file
        weight_map = read_json(index, 'an index with a weight_map').get('weight_map')
        if not isinstance(weight_map, dict) or not all(isinstance(n, str) for n in weight_map.values()):
            raise ValueError(f'{index} has no weight_map of tensor names to file names: save the folder again')
        weight_files = [inside(name_or_path, n, cache_repo(name_or_path)) for n in sorted(set(weight_map.values()))]
    else:  # one file, safetensors preferred
        weight_files = [os.path.join(name_or_path, n) for n in ('model.safetensors', 'pytorch_model.bin')]
        weight_files = [p for p in weight_files if os.path.isfile(p)][:1]
    if not os.path.isfile(config_file) or not weight_files:
        raise ValueError(f'{name_or_path} is not a Hugging Face GPT-2 folder: it needs config.json and '
                         "model.safetensors (or pytorch_model.bin), as transformers' save_pretrained writes them")
    return weight_files


def cache_repo(folder):
    """The folder whose files `folder` may name: itself, or for a snapshot in the Hugging Face cache
    (.../models--org--name/snapshots/REVISION), its repository's folder, where its links point (blobs/)."""
    parent = os.path.dirname(os.path.abspath(folder))
    if os.path.basename(parent) == 'snapshots' and os.path.basename(os.path.dirname(parent)).startswith('models--'):
        return os.path.dirname(parent)
    return folder


def gpt2_args_from_hf(hf, source):
    """GPTConfig arguments for a Hugging Face GPT-2 config.json (a dict), refusing the options this GPT cannot
    compute exactly (each named with its value)."""
    if hf.get('model_type', 'gpt2') != 'gpt2':  # e.g. the Llama that export_hf writes
        raise ValueError(f"{source} describes a {hf['model_type']!r} model, which this GPT cannot reproduce exactly: "
                         f"model_type={hf['model_type']!r}; it reads Hugging Face GPT-2 folders only (for a model "
                         'exported by export.py, use the run it came from: --out_dir, init_from=resume)')
    required = ('n_layer', 'n_head', 'n_embd', 'n_positions', 'vocab_size')
    # field: (GPT2Config's default, the values this GPT reproduces)
    supported = {
        'model_type': ('gpt2', ('gpt2',)),
        'activation_function': ('gelu_new', ('gelu_new', 'gelu_pytorch_tanh')),  # both are GELU's tanh approximation
        'layer_norm_epsilon': (1e-5, (1e-5,)),
        'scale_attn_weights': (True, (True,)),
        'scale_attn_by_inverse_layer_idx': (False, (False,)),
        'reorder_and_upcast_attn': (False, (False,)),
        'add_cross_attention': (False, (False,)),
    }
    problems = [f'{k} is missing' for k in required if k not in hf]
    problems += [f'{k}={hf[k]!r} (supported: {", ".join(map(repr, ok))})'
                 for k, (default, ok) in supported.items() if hf.get(k, default) not in ok]
    problems += [f'{k}={hf[k]!r} is not a positive whole number' for k in required if k in hf and (
        type(hf[k]) is not int or hf[k] < 1)]
    if problems:
        raise ValueError(f"{source} describes a model this GPT cannot reproduce exactly: {'; '.join(problems)}")
    return dict(n_layer=hf['n_layer'], n_head=hf['n_head'], n_embd=hf['n_embd'], block_size=hf['n_positions'],
                vocab_size=hf['vocab_size'], d_ff=hf.get('n_inner') or 4 * hf['n_embd'], bias=True,
                tie_embeddings=hf.get('tie_word_embeddings', True))



# ----------------------------------------------------------------------------------------------
# writing

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


def export_hf(model, folder, force=False):
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
    # both files are written whole under temporary names first: a failure (a full disk) changes nothing. Then the
    # old config.json goes, the weights come, the new config.json last: a folder with a config.json holds that
    # config's weights
    config_path, weights_path = os.path.join(folder, 'config.json'), os.path.join(folder, 'model.safetensors')
    try:
        with atomic_path(config_path) as config_tmp:
            with open(config_tmp, 'w') as f:
                json.dump(config, f, indent=2)
            with atomic_path(weights_path) as weights_tmp:
                save_file(tensors, weights_tmp, metadata={'format': 'pt'})
                with contextlib.suppress(FileNotFoundError):
                    os.remove(config_path)
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error
        raise OSError(f'could not write {folder} ({getattr(e, "strerror", None) or one_line(e, 150)}): the files '
                      'already there are unchanged; free some disk space or choose another --to') from None
    return layout
