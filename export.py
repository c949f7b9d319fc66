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

import os
import sys

import checkpoint
from configurator import cli, configure
from hf import GPT2_EOS, export_hf

DEFAULTS = dict(
    out_dir='out',  # the training run to export: out_dir/ckpt.pt (or the shards in out_dir/ckpt.dcp)
    to='',  # the folder to write the Hugging Face model to
    force=False,  # replace a config.json / model.safetensors already in `to`
)


def main():
    config = configure(DEFAULTS, sys.argv[1:])
    if not config['to']:
        raise ValueError('say where to write the Hugging Face folder: --to=FOLDER, '
                         'e.g. python export.py --out_dir=out --to=hf/')
    model, _ = checkpoint.load_model('resume', config['out_dir'])
    layout = export_hf(model, config['to'], config['force'])
    arch = {'gpt2': 'GPT2LMHeadModel', 'llama': 'LlamaForCausalLM'}[layout]
    print(f"wrote {os.path.join(config['to'], 'config.json')} and model.safetensors: a {arch} of "
          f"{model.get_num_params(non_embedding=False) / 1e6:.2f}M parameters")
    if model.config.vocab_size > GPT2_EOS:
        print("add the GPT-2 tokenizer: AutoTokenizer.from_pretrained('openai-community/gpt2')"
              f".save_pretrained({config['to']!r})")
    else:
        print('its vocabulary is not GPT-2\'s: transformers has no tokenizer for it; encode text with the '
              "dataset's meta.pkl (tokenizer.Tokenizer) and pass token ids")


if __name__ == '__main__':
    cli(main)
