"""
Hugging Face in both directions. Read into a GPT: OpenAI's GPT-2 names, and folders or hub ids of GPT-2
(GPT2LMHeadModel) and of the Llama family (FAMILIES: LlamaForCausalLM for Llama 2/3.x, SmolLM and TinyLlama,
Qwen2ForCausalLM, Qwen3ForCausalLM). Written (export_hf): a GPT as the one of those architectures that computes it,
a folder that transformers loads with the same logits.

    args = hf.model_args('HuggingFaceTB/SmolLM2-135M')       # GPTConfig's arguments (a hub id downloads config.json)
    weights = hf.state_dict('path/to/folder')                # under GPT's names, in the folder's dtype
    hf.export_hf(model, 'hf/')                               # config.json + model.safetensors
"""

import contextlib
import json
import os
import re
import shutil

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from atomic import atomic_path, inside
from configurator import one_line, read_config_file
from model import GPTConfig
from tokenizer import TOKENIZER_FILES

PRETRAINED = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')
HUB_ID = re.compile(r'[\w.-]+/[\w.-]+')  # organization/name, e.g. HuggingFaceTB/SmolLM2-135M
# the Hugging Face architectures read and written besides GPT-2: all have Llama's tensor names (llama_names) and
# config keys (llama_args); what each adds to Llama is a GPTConfig field. The next family is one more line here.
FAMILIES = {
    'LlamaForCausalLM': dict(model_type='llama', qkv_bias=False, qk_norm=False),  # Llama 2/3.x, SmolLM, TinyLlama
    'Qwen2ForCausalLM': dict(model_type='qwen2', qkv_bias=True, qk_norm=False),  # Qwen2, Qwen2.5: q/k/v biases
    'Qwen3ForCausalLM': dict(model_type='qwen3', qkv_bias=False, qk_norm=True),  # Qwen3: q and k RMSNorm per head
}
GPT2_ARCHITECTURE = 'GPT2LMHeadModel'
# what a hub id's download holds: the model, its tokenizer and chat template; never code or pickles
HUB_FILES = ['config.json', *TOKENIZER_FILES]
WEIGHT_FILES = ['model.safetensors', 'model.safetensors.index.json', 'model-*.safetensors']
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}

# ----------------------------------------------------------------------------------------------
# reading


def is_pretrained(init_from):
    """Whether init_from names pretrained weights this module reads: a GPT-2 name, a local folder or a hub id."""
    return init_from in PRETRAINED or os.path.isdir(init_from) or bool(HUB_ID.fullmatch(init_from))


def local_folder(init_from, weights=False):
    """Where init_from's files are: a folder itself, a GPT-2 name as it is (gpt2_weight_files downloads it), or the
    snapshot of a hub id in the Hugging Face cache, downloaded once: config and tokenizer files, and with `weights`
    the safetensors."""
    if init_from in PRETRAINED or os.path.isdir(init_from):
        return init_from
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(init_from, allow_patterns=HUB_FILES + (WEIGHT_FILES if weights else []))
    except Exception as e:
        raise OSError(f'init_from={init_from!r} is no local folder, and as a Hugging Face hub id it could not be '
                      f'downloaded ({one_line(e, 150)}): check the path, or download it on a machine with internet '
                      f'(`hf download {init_from}`) and copy the folder or the cache (~/.cache/huggingface) here') from None


def model_args(init_from):
    """The GPTConfig arguments of init_from: a GPT-2 name's preset (config/model_NAME.py: nothing is downloaded),
    or a folder's (or hub id's) config.json, whichever supported family it describes."""
    if init_from in PRETRAINED:
        return gpt2_args(init_from)
    _, hf, source, architecture = open_folder(init_from)
    return gpt2_args_from_hf(hf, source) if architecture == GPT2_ARCHITECTURE else llama_args(hf, architecture, source)


def state_dict(init_from):
    """init_from's weights under GPT's names: GPT-2's (gpt2_state_dict), or a Llama-family folder's read tensor by
    tensor from safetensors in the dtype of its config.json (torch_dtype; the stored one when absent), so that a
    bf16 model is never copied to float32."""
    if init_from in PRETRAINED:
        return gpt2_state_dict(gpt2_weight_files(init_from))
    folder, hf, source, architecture = open_folder(init_from, weights=True)
    files = weight_files(folder, safetensors_only=architecture != GPT2_ARCHITECTURE)
    if architecture == GPT2_ARCHITECTURE:
        return gpt2_state_dict(files)
    names = llama_names(GPTConfig(**llama_args(hf, architecture, source)))
    dtype = DTYPES.get(hf.get('torch_dtype') or hf.get('dtype'))
    with contextlib.ExitStack() as stack:
        where = {}  # tensor name -> the open file that holds it
        for path in files:
            try:
                handle = stack.enter_context(safe_open(path, 'pt'))
            except Exception as e:
                raise ValueError(f'{path} is unreadable or corrupt ({one_line(e, 150)}): download or save it again') from None
            where.update(dict.fromkeys(handle.keys(), handle))
        weights = {}
        for ours, parts in names.items():
            tensors = [read_tensor(where, name, shape, folder) for name, shape in parts]
            tensor = tensors[0] if len(tensors) == 1 else torch.cat(tensors)  # q, k, v or gate, up stacked
            weights[ours] = tensor if dtype is None else tensor.to(dtype)
    expected = {name for parts in names.values() for name, _ in parts} | {'lm_head.weight'}  # a tied copy is fine
    unexpected = sorted(n for n in where if n not in expected and not n.endswith('rotary_emb.inv_freq'))
    if unexpected:
        raise ValueError(f'{folder} holds the tensor {unexpected[0]} (of {len(unexpected)} unexpected) that its '
                         'config.json does not describe: the files were edited or written by another program')
    return weights


def read_tensor(where, name, shape, folder):
    """Tensor `name` of the open safetensors files, checked to be there with this shape."""
    if name not in where:
        raise ValueError(f'{folder} lacks the tensor {name} that its config.json implies: the files are incomplete, '
                         'or config.json does not belong to them; download or save the folder again')
    found = tuple(where[name].get_slice(name).get_shape())
    if found != shape:
        raise ValueError(f'{folder}: the tensor {name} has shape {found}, but its config.json implies {shape}: '
                         'the files were edited, or config.json does not belong to them')
    try:
        return where[name].get_tensor(name)
    except Exception as e:  # a truncated file: its header promises more than it holds
        raise ValueError(f'{folder}: the tensor {name} is unreadable ({one_line(e, 150)}): download or save the folder '
                         'again') from None


def open_folder(init_from, weights=False):
    """(folder, config.json's settings, its path, the architecture it describes) of a folder or hub id."""
    folder = local_folder(init_from, weights)
    hf, source = hf_config(folder)
    return folder, hf, source, family(hf, source)


def hf_config(folder):
    """(config.json's settings, its path) of a Hugging Face folder."""
    config_file = os.path.join(folder, 'config.json')
    if not os.path.isfile(config_file):
        raise ValueError(f'{folder} is not a Hugging Face model folder: it needs config.json and model.safetensors '
                         "(or a sharded model.safetensors.index.json), as transformers' save_pretrained writes them")
    return read_json(config_file, 'a JSON object of settings'), config_file


def family(hf, source):
    """The architecture config.json names (its model_type when it names none; GPT-2 when neither), if supported."""
    supported = [GPT2_ARCHITECTURE, *FAMILIES]
    architectures = hf.get('architectures') or []
    by_type = {v['model_type']: k for k, v in FAMILIES.items()} | {'gpt2': GPT2_ARCHITECTURE}
    name = architectures[0] if isinstance(architectures, list) and architectures else \
        by_type.get(hf.get('model_type', 'gpt2'), hf.get('model_type'))
    if name not in supported:
        raise ValueError(f'{source} describes a {name!r} model, which this GPT does not compute: it reads '
                         f"{', '.join(supported)} (Llama 2/3.x, SmolLM, TinyLlama, Qwen2/2.5, Qwen3)")
    return name


def gpt2_args(name_or_path):
    """The GPTConfig arguments of a GPT-2 name (its preset, config/model_NAME.py) or of a GPT-2 folder."""
    if name_or_path in PRETRAINED:
        preset = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config',
                              f"model_{name_or_path.replace('-', '_')}.py")
        return read_config_file(preset, {})
    hf, source = hf_config(name_or_path)
    return gpt2_args_from_hf(hf, source)


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


def gpt2_weight_files(name):
    """The weight files of OpenAI's GPT-2 `name`, from the hub or the Hugging Face cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    files = ('model.safetensors',)  # the architecture is the preset's (gpt2_args)
    try:
        return [hf_hub_download(f'openai-community/{name}', f) for f in files]
    except Exception as e:
        try:  # a cache filled under the old repo name, e.g. by transformers' from_pretrained('gpt2')
            return [hf_hub_download(name, f, local_files_only=True) for f in files]
        except Exception:
            reason = 'no network or HF_HUB_OFFLINE=1, and not in the Hugging Face cache' \
                if isinstance(e, LocalEntryNotFoundError) else one_line(e, 150)
            raise OSError(f'could not download {name} ({reason}): put a Hugging Face GPT-2 folder '
                          f'(config.json + model.safetensors of openai-community/{name}) here and pass '
                          'its path instead, or fill the Hugging Face cache on a machine with internet (`hf download '
                          f'openai-community/{name} config.json model.safetensors`) and copy it here '
                          '(~/.cache/huggingface, or $HF_HOME)') from None


def weight_files(folder, safetensors_only=False):
    """The weight files of a Hugging Face folder: the shards its model.safetensors.index.json names (each inside
    the folder), else model.safetensors (else pytorch_model.bin, for GPT-2)."""
    index = os.path.join(folder, 'model.safetensors.index.json')
    if os.path.isfile(index):  # sharded: the index maps each tensor to its file
        weight_map = read_json(index, 'an index with a weight_map').get('weight_map')
        if not isinstance(weight_map, dict) or not all(isinstance(n, str) for n in weight_map.values()):
            raise ValueError(f'{index} has no weight_map of tensor names to file names: save the folder again')
        return [inside(folder, n, cache_repo(folder)) for n in sorted(set(weight_map.values()))]
    names = ('model.safetensors',) if safetensors_only else ('model.safetensors', 'pytorch_model.bin')
    found = [p for p in (os.path.join(folder, n) for n in names) if os.path.isfile(p)][:1]
    if not found:
        raise ValueError(f"{folder} has no weights: it needs {' or '.join(names)} (or a sharded "
                         "model.safetensors.index.json), as transformers' save_pretrained writes them")
    return found


def cache_repo(folder):
    """The folder whose files `folder` may name: itself, or for a snapshot in the Hugging Face cache
    (.../models--org--name/snapshots/REVISION), its repository's folder, where its links point (blobs/)."""
    parent = os.path.dirname(os.path.abspath(folder))
    if os.path.basename(parent) == 'snapshots' and os.path.basename(os.path.dirname(parent)).startswith('models--'):
        return os.path.dirname(parent)
    return folder


def llama_args(hf, architecture, source):
    """GPTConfig arguments for the config.json (a dict) of a Llama-family model, refusing what this GPT cannot
    compute exactly (each named with its value). transformers 5 writes rope_parameters, 4 rope_theta and
    rope_scaling."""
    required = ('hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'vocab_size',
                'max_position_embeddings')
    rope = hf.get('rope_parameters') or hf.get('rope_scaling') or {}
    rope = rope if isinstance(rope, dict) else {'rope_type': rope}
    rope_type = rope.get('rope_type', rope.get('type', 'default'))
    # field: (its value, the values this GPT reproduces)
    supported = {
        'hidden_act': (hf.get('hidden_act', 'silu'), ('silu',)),
        'rope_type': (rope_type, ('default', 'llama3')),
        'use_sliding_window': (hf.get('use_sliding_window', False), (False,)),  # Qwen's option (Mistral's always)
        'mlp_bias': (hf.get('mlp_bias', False), (hf.get('attention_bias', False),)),  # one bias switch here
        'attention_bias': (hf.get('attention_bias', False), (False,) if architecture != 'LlamaForCausalLM' else
                           (False, True)),  # Qwen3's would add an o_proj bias without MLP biases
    }
    problems = [f'{k} is missing' for k in required if k not in hf]
    problems += [f'{k}={hf[k]!r} is not a positive whole number' for k in required + ('num_key_value_heads', 'head_dim')
                 if hf.get(k) is not None and (type(hf[k]) is not int or hf[k] < 1)]
    problems += [f'{k}={value!r} (supported: {", ".join(map(repr, ok))})' for k, (value, ok) in supported.items()
                 if value not in ok]
    if problems:
        raise ValueError(f"{source} describes a model this GPT cannot reproduce exactly: {'; '.join(problems)}")
    scaling = ()
    if rope_type == 'llama3':
        scaling = tuple(rope.get(k) for k in ('factor', 'low_freq_factor', 'high_freq_factor',
                                              'original_max_position_embeddings'))
    heads = hf['num_attention_heads']
    return dict(n_layer=hf['num_hidden_layers'], n_head=heads, n_kv_head=hf.get('num_key_value_heads') or heads,
                n_embd=hf['hidden_size'], head_size=hf.get('head_dim') or hf['hidden_size'] // heads,
                d_ff=hf['intermediate_size'], block_size=hf['max_position_embeddings'], vocab_size=hf['vocab_size'],
                norm='rmsnorm', pos_emb='rope', mlp='swiglu', norm_eps=float(hf.get('rms_norm_eps', 1e-6)),
                rope_theta=float(rope.get('rope_theta', hf.get('rope_theta', 10000.0))), rope_scaling=scaling,
                bias=hf.get('attention_bias', False), qkv_bias=FAMILIES[architecture]['qkv_bias'],
                qk_norm=FAMILIES[architecture]['qk_norm'], tie_embeddings=hf.get('tie_word_embeddings', False))


def llama_names(c):
    """Each GPT tensor of a Llama-family model, with the Hugging Face tensors (name, shape) it stacks: c_attn
    holds q, k, v and c_fc gate, up. No permutation: our rotary uses Llama's rotate_half layout. One table for
    reading (stacked) and writing (split)."""
    E, hs, q, kv, ff = c.n_embd, c.head_size, c.n_head * c.head_size, c.n_kv_head * c.head_size, c.d_ff
    names = {'transformer.wte.weight': [('model.embed_tokens.weight', (c.vocab_size, E))],
             'transformer.ln_f.weight': [('model.norm.weight', (E,))]}
    if not c.tie_embeddings:
        names['lm_head.weight'] = [('lm_head.weight', (c.vocab_size, E))]
    for i in range(c.n_layer):
        layer = {
            'ln_1.weight': [('input_layernorm.weight', (E,))],
            'ln_2.weight': [('post_attention_layernorm.weight', (E,))],
            'attn.c_attn.weight': [('self_attn.q_proj.weight', (q, E)), ('self_attn.k_proj.weight', (kv, E)),
                                   ('self_attn.v_proj.weight', (kv, E))],
            'attn.c_proj.weight': [('self_attn.o_proj.weight', (E, q))],
            'mlp.c_fc.weight': [('mlp.gate_proj.weight', (ff, E)), ('mlp.up_proj.weight', (ff, E))],
            'mlp.c_proj.weight': [('mlp.down_proj.weight', (E, ff))],
        }
        if c.bias or c.qkv_bias:  # Llama's attention_bias and mlp_bias, or Qwen2's q/k/v biases
            layer['attn.c_attn.bias'] = [('self_attn.q_proj.bias', (q,)), ('self_attn.k_proj.bias', (kv,)),
                                         ('self_attn.v_proj.bias', (kv,))]
        if c.bias:
            layer.update({'attn.c_proj.bias': [('self_attn.o_proj.bias', (E,))],
                          'mlp.c_fc.bias': [('mlp.gate_proj.bias', (ff,)), ('mlp.up_proj.bias', (ff,))],
                          'mlp.c_proj.bias': [('mlp.down_proj.bias', (E,))]})
        if c.qk_norm:  # Qwen3
            layer.update({'attn.q_norm.weight': [('self_attn.q_norm.weight', (hs,))],
                          'attn.k_norm.weight': [('self_attn.k_norm.weight', (hs,))]})
        names.update({f'transformer.h.{i}.{k}': [(f'model.layers.{i}.{n}', shape) for n, shape in parts]
                      for k, parts in layer.items()})
    return names


def gpt2_args_from_hf(hf, source):
    """GPTConfig arguments for a Hugging Face GPT-2 config.json (a dict), refusing the options this GPT cannot
    compute exactly (each named with its value)."""
    required = ('n_layer', 'n_head', 'n_embd', 'n_positions', 'vocab_size')
    # field: (GPT2Config's default, the values this GPT reproduces)
    supported = {
        'model_type': ('gpt2', ('gpt2',)),
        'activation_function': ('gelu_new', ('gelu_new', 'gelu_pytorch_tanh')),  # both are GELU's tanh approximation
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
                norm_eps=float(hf.get('layer_norm_epsilon', 1e-5)), tie_embeddings=hf.get('tie_word_embeddings', True))


# ----------------------------------------------------------------------------------------------
# writing

GPT2_ARCH = dict(norm='layernorm', pos_emb='learned', mlp='gelu')
LLAMA_ARCH = dict(norm='rmsnorm', pos_emb='rope', mlp='swiglu')
GPT2_EOS = 50256  # <|endoftext|> of the GPT-2 BPE, which the project's BPE datasets use


def hf_layout(config):
    """The Hugging Face architecture that computes exactly what this model computes: GPT2LMHeadModel or one of
    FAMILIES. A ValueError naming the options where the model departs from the nearer one when none does."""
    gpt2_misses = [f'{k}={getattr(config, k)!r}' for k, v in GPT2_ARCH.items() if getattr(config, k) != v]
    for name, value, why in (('n_kv_head', config.n_kv_head != config.n_head, 'grouped-query attention'),
                             ('head_size', config.head_size * config.n_head != config.n_embd, 'not n_embd / n_head'),
                             ('qkv_bias', config.qkv_bias and not config.bias, ''), ('qk_norm', config.qk_norm, ''),
                             ('rope_scaling', config.rope_scaling, '')):
        if value:
            gpt2_misses.append(f'{name}={getattr(config, name)!r}' + (f' ({why})' if why else ''))
    llama_misses = [f'{k}={getattr(config, k)!r}' for k, v in LLAMA_ARCH.items() if getattr(config, k) != v]
    if config.qk_norm and (config.bias or config.qkv_bias):
        llama_misses.append(f'qk_norm with bias={config.bias}, qkv_bias={config.qkv_bias} (Qwen3 has no biases)')
    if not gpt2_misses:
        return GPT2_ARCHITECTURE
    if not llama_misses:
        qwen2 = config.qkv_bias and not config.bias
        return 'Qwen3ForCausalLM' if config.qk_norm else 'Qwen2ForCausalLM' if qwen2 else 'LlamaForCausalLM'
    nearest, misses = ('GPT-2', gpt2_misses) if len(gpt2_misses) <= len(llama_misses) else ('Llama', llama_misses)
    raise ValueError("cannot export this model: Hugging Face's GPT-2 needs norm='layernorm', pos_emb='learned', "
                     "mlp='gelu' and n_kv_head == n_head, its Llama (Qwen2, Qwen3) needs norm='rmsnorm', "
                     f"pos_emb='rope', mlp='swiglu'; this model is nearest to {nearest} but has {', '.join(misses)}, "
                     'which none computes')


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


def gpt2_config(config, token_ids):
    return {
        'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2',
        'vocab_size': config.vocab_size, 'n_positions': config.block_size, 'n_embd': config.n_embd,
        'n_layer': config.n_layer, 'n_head': config.n_head, 'n_inner': config.d_ff,
        'activation_function': 'gelu_new', 'layer_norm_epsilon': config.norm_eps,
        'resid_pdrop': config.dropout, 'embd_pdrop': config.dropout, 'attn_pdrop': config.dropout,
        'tie_word_embeddings': config.tie_embeddings, **token_ids,
    }


def llama_tensors(model):
    """The weights under the Hugging Face names of a Llama-family model (llama_names): c_attn and c_fc split."""
    weights = model.state_dict()
    return {name: tensor for ours, parts in llama_names(model.config).items()
            for (name, _), tensor in zip(parts, weights[ours].split([shape[0] for _, shape in parts]))}


def llama_config(config, architecture, token_ids):
    rope = {'rope_theta': float(config.rope_theta), 'rope_type': 'default'}
    if config.rope_scaling:
        rope.update(zip(('factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'),
                        config.rope_scaling), rope_type='llama3')
    return {
        'architectures': [architecture], 'model_type': FAMILIES[architecture]['model_type'],
        'vocab_size': config.vocab_size, 'hidden_size': config.n_embd, 'intermediate_size': config.d_ff,
        'num_hidden_layers': config.n_layer, 'num_attention_heads': config.n_head,
        'num_key_value_heads': config.n_kv_head, 'head_dim': config.head_size, 'hidden_act': 'silu',
        'max_position_embeddings': config.block_size, 'rms_norm_eps': config.norm_eps,
        'rope_theta': rope['rope_theta'], 'rope_scaling': rope if config.rope_scaling else None,  # transformers 4
        'rope_parameters': rope,  # transformers 5
        'attention_bias': config.bias, 'mlp_bias': config.bias, 'attention_dropout': config.dropout,
        'use_sliding_window': False, 'tie_word_embeddings': config.tie_embeddings, **token_ids,
    }


def token_ids(config, source_folder, tokenizer=None):
    """bos/eos/pad token ids for config.json: the source folder's, else the tokenizer's (the HFTokenizer of the
    tokenizer.json the model was trained with), else GPT-2's <|endoftext|> for a GPT-2 BPE vocabulary, else none."""
    if source_folder:
        source = read_json(os.path.join(source_folder, 'config.json'), 'a JSON object of settings')
        return {k: source.get(k) for k in ('bos_token_id', 'eos_token_id', 'pad_token_id')}
    if tokenizer:
        return {'bos_token_id': tokenizer.bos_id, 'eos_token_id': tokenizer.eos_id}
    eos = GPT2_EOS if config.vocab_size > GPT2_EOS else None
    return {'bos_token_id': eos, 'eos_token_id': eos}


def export_hf(model, folder, force=False, source_folder=None, tokenizer=None):
    """Write `model` to `folder` as a Hugging Face model; returns the architecture written (hf_layout). Files
    already there other than config.json and model.safetensors (a tokenizer, a README) are kept. A model read
    from a Hugging Face `source_folder` keeps its token ids, and its tokenizer files come along where `folder`
    has none; so do those of `tokenizer` (the HFTokenizer of the data a model was trained on) and its ids."""
    tokenizer_folder = source_folder or (tokenizer.folder if tokenizer else None)
    # checked before anything is written: a tokenizer file linked out of its folder is refused, never copied
    tokenizer_files = [(inside(tokenizer_folder, name, cache_repo(tokenizer_folder)), os.path.join(folder, name))
                       for name in (TOKENIZER_FILES if tokenizer_folder else ())
                       if os.path.lexists(os.path.join(tokenizer_folder, name))]
    layout = hf_layout(model.config)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f'--to={folder} is a file: give a folder to write config.json and model.safetensors into')
    present = [n for n in ('config.json', 'model.safetensors') if os.path.exists(os.path.join(folder, n))]
    if present and not force:
        raise ValueError(f"{folder} already holds {' and '.join(present)}: pass --force=True to replace them, "
                         'or choose another --to folder')
    ids = token_ids(model.config, source_folder, tokenizer)
    tensors, config = (gpt2_tensors(model), gpt2_config(model.config, ids)) if layout == GPT2_ARCHITECTURE else \
        (llama_tensors(model), llama_config(model.config, layout, ids))
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
        for source, target in tokenizer_files:
            if os.path.isfile(source) and not os.path.exists(target):
                with atomic_path(target) as tmp:
                    shutil.copyfile(source, tmp)
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error
        raise OSError(f'could not write {folder} ({getattr(e, "strerror", None) or one_line(e, 150)}): the files '
                      'already there are unchanged; free some disk space or choose another --to') from None
    return layout


# ----------------------------------------------------------------------------------------------
# LoRA adapters for PEFT


def export_peft(config, adapters, rank, alpha, dropout, folder, base, force=False):
    """Write LoRA adapters (lora.adapter_state's tensors: transformer.h.0.attn.c_attn.lora_A, ...) of a model with
    GPTConfig `config` as a PEFT adapter folder, adapter_config.json and adapter_model.safetensors, for the
    Hugging Face export (export_hf) of its base model, recorded as `base` (a hub id or a folder):
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder) computes what base + adapters
    compute. Returns the architecture (hf_layout).
    Our fused matrices split as their weights do (llama_names): c_attn's adapter B A x is q, k and v's with the same
    A, each with its rows of B (gate and up of c_fc likewise). GPT-2's Conv1D modules have our names and take A
    (rank x in) and B (out x rank) as they are: PEFT's fan_in_fan_out only transposes the weight it merges into."""
    layout = hf_layout(config)
    names = None if layout == GPT2_ARCHITECTURE else llama_names(config)
    tensors, targets = {}, set()
    for key, lora_a in adapters.items():
        if not key.endswith('.lora_A'):
            continue
        ours = key.removesuffix('.lora_A')  # transformer.h.0.attn.c_attn
        lora_b = adapters[ours + '.lora_B']
        if names is None:
            modules = [(ours, lora_b)]
        else:
            parts = names[ours + '.weight']
            modules = [(name.removesuffix('.weight'), rows)
                       for (name, _), rows in zip(parts, lora_b.split([shape[0] for _, shape in parts]))]
        for module, rows in modules:  # PEFT's names: its wrapper's prefix, without the adapter's name ('default')
            tensors[f'base_model.model.{module}.lora_A.weight'] = lora_a
            tensors[f'base_model.model.{module}.lora_B.weight'] = rows
            targets.add(module.split('.', 3)[3])  # model.layers.0.self_attn.q_proj -> self_attn.q_proj
    if not tensors:
        raise ValueError('there are no LoRA adapters to export: --adapter=True is for the checkpoint of a run with '
                         'lora_rank > 0')
    adapter_config = {
        'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'base_model_name_or_path': base,
        'r': rank, 'lora_alpha': alpha, 'lora_dropout': dropout, 'bias': 'none',
        # a target matches each module whose name ends with it: attn.c_proj is not mlp.c_proj
        'target_modules': sorted(targets), 'fan_in_fan_out': layout == GPT2_ARCHITECTURE,  # Conv1D stores (in, out)
        'use_rslora': False, 'use_dora': False, 'init_lora_weights': True, 'inference_mode': True,
        'modules_to_save': None, 'layers_to_transform': None, 'rank_pattern': {}, 'alpha_pattern': {},
    }
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f'--to={folder} is a file: give a folder to write the adapter into')
    present = [n for n in ('adapter_config.json', 'adapter_model.safetensors') if os.path.exists(os.path.join(folder, n))]
    if present and not force:
        raise ValueError(f"{folder} already holds {' and '.join(present)}: pass --force=True to replace them, "
                         'or choose another --to folder')
    tensors = {k: v.detach().float().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    config_path, weights_path = os.path.join(folder, 'adapter_config.json'), os.path.join(folder, 'adapter_model.safetensors')
    try:  # as export_hf: both written whole under temporary names, the config last
        with atomic_path(config_path) as config_tmp:
            with open(config_tmp, 'w') as f:
                json.dump(adapter_config, f, indent=2)
            with atomic_path(weights_path) as weights_tmp:
                save_file(tensors, weights_tmp, metadata={'format': 'pt'})
                with contextlib.suppress(FileNotFoundError):
                    os.remove(config_path)
    except (OSError, SafetensorError) as e:
        raise OSError(f'could not write {folder} ({getattr(e, "strerror", None) or one_line(e, 150)}): the files '
                      'already there are unchanged; free some disk space or choose another --to') from None
    return layout
