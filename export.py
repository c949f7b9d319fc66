"""
Export a checkpoint as a Hugging Face model folder (config.json + model.safetensors) that transformers
loads with from_pretrained and runs with the same logits.

    python export.py --out_dir=out --to=hf/
    python export.py --init_from=path/to/hf_folder --to=hf2/      # a Hugging Face folder (or hub id) again
    python -c "from transformers import AutoModelForCausalLM as M; print(M.from_pretrained('hf/'))"

GPT-2-architecture models (LayerNorm, learned positions, GELU MLP, n_kv_head == n_head) become
GPT2LMHeadModel; Llama-style models (RMSNorm, rotary positions, SwiGLU, grouped-query attention or not)
become LlamaForCausalLM, or Qwen2ForCausalLM with q/k/v biases, Qwen3ForCausalLM with q/k norms. Other mixes
are refused: no Hugging Face architecture computes them. A Hugging Face source's tokenizer files and token ids
come along, and so do those of a checkpoint trained on data prepared with a tokenizer.json (`prepare.py
--tokenizer=...`, checked by its fingerprint); for GPT-2 BPE or characters the script says what to do.
"""

import os
import sys

import checkpoint
from atomic import inside
from configurator import cli, configure
from hf import GPT2_EOS, export_hf

DEFAULTS = dict(
    init_from='resume',  # 'resume' (out_dir's checkpoint), or a Hugging Face folder or hub id to write again
    out_dir='out',  # the training run to export: out_dir/ckpt.pt (or the shards in out_dir/ckpt.dcp)
    to='',  # the folder to write the Hugging Face model to
    force=False,  # replace a config.json / model.safetensors already in `to`
)


def trained_tokenizer(ckpt):
    """The tokenizer.json tokenizer the checkpoint was trained with, if its data folder still holds that one."""
    data_dir = ckpt['config'].get('data_dir') or ''
    if not os.path.isfile(os.path.join(data_dir, 'tokenizer.json')):
        return None
    from tokenizer import TOKENIZER_FILES, HFTokenizer
    for name in TOKENIZER_FILES:  # prepare.py copied these in: a link out of the folder was planted
        inside(data_dir, name)
    tokenizer = HFTokenizer(data_dir)
    if tokenizer.fingerprint != ckpt['config'].get('tokenizer'):
        print(f'{data_dir} holds another tokenizer than the one this model was trained with: no tokenizer files exported')
        return None
    return tokenizer


def main():
    config = configure(DEFAULTS, sys.argv[1:])
    if not config['to']:
        raise ValueError('say where to write the Hugging Face folder: --to=FOLDER, '
                         'e.g. python export.py --out_dir=out --to=hf/')
    model, source = checkpoint.load_model(config['init_from'], config['out_dir'])
    hf_source = source.path if source.ckpt is None and os.path.isdir(source.path) else None  # not a GPT-2 name
    data_tokenizer = trained_tokenizer(source.ckpt) if source.ckpt is not None else None
    arch = export_hf(model, config['to'], config['force'], hf_source, data_tokenizer)
    print(f"wrote {os.path.join(config['to'], 'config.json')} and model.safetensors: a {arch} of "
          f"{model.get_num_params(non_embedding=False) / 1e6:.2f}M parameters")
    if hf_source or data_tokenizer:
        print(f'with the tokenizer files of {hf_source or data_tokenizer.folder}')
    elif model.config.vocab_size > GPT2_EOS:
        print("add the GPT-2 tokenizer: AutoTokenizer.from_pretrained('openai-community/gpt2')"
              f".save_pretrained({config['to']!r})")
    else:
        print('its vocabulary is not GPT-2\'s: transformers has no tokenizer for it; encode text with the '
              "dataset's meta.pkl (tokenizer.Tokenizer) and pass token ids")


if __name__ == '__main__':
    cli(main)
