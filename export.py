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

A LoRA run's checkpoint (train.py --lora_rank=8: its adapters and its base model's identity) exports as the merged
model (the adapters folded into the base's weights), or with --adapter=True as a PEFT adapter folder for its base:

    python export.py --out_dir=out-lora --to=hf/                                     # merged: no peft needed
    python export.py --out_dir=out-lora --to=adapter/ --adapter=True                 # base: init_from, as recorded
    python export.py --out_dir=out-lora --to=adapter/ --adapter=True --base_to=base/ # the base too, as trained
    python -c "from peft import AutoPeftModelForCausalLM as M; print(M.from_pretrained('adapter/'))"
"""

import os
import sys

import torch

import checkpoint
import lora
from atomic import inside
from configurator import cli, configure
from hf import GPT2_EOS, PRETRAINED, export_hf, export_peft
from model import GPT, GPTConfig

DEFAULTS = dict(
    init_from='resume',  # 'resume' (out_dir's checkpoint), or a Hugging Face folder or hub id to write again
    out_dir='out',  # the training run to export: out_dir/ckpt.pt (or the shards in out_dir/ckpt.dcp)
    to='',  # the folder to write the Hugging Face model to
    force=False,  # replace a config.json / model.safetensors (adapter_config.json / ...) already in `to`
    adapter=False,  # a LoRA run: write its adapters to `to` as a PEFT adapter folder instead of the merged model
    base_to='',  # with adapter: also write the base model to this folder and name it as the adapter's base;
    # by default the base is the one the run recorded, its init_from (a hub id, a GPT-2 name or a folder)
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


def lora_settings(ckpt):
    """The settings of a LoRA run's checkpoint (its 'lora' entry: rank, alpha, dropout, targets, the base's
    init_from), its adapters checked to be those the settings give its architecture: names and shapes."""
    recorded = ckpt['lora']
    settings = dict(rank=recorded.get('lora_rank'), alpha=recorded.get('lora_alpha'),
                    dropout=recorded.get('lora_dropout'), base=(recorded.get('base') or {}).get('init_from'),
                    targets=[t.strip() for t in str(recorded.get('lora_targets') or '').split(',') if t.strip()])
    problems = lora.target_problems(settings['targets'])
    if not isinstance(settings['rank'], int) or settings['rank'] < 1 or not isinstance(settings['alpha'], (int, float)):
        problems.append(f"lora_rank={settings['rank']!r} and lora_alpha={settings['alpha']!r} are not a rank and a scale")
    if not problems:
        with torch.device('meta'):  # shapes only
            expected = lora.adapter_state(lora.add_adapters(GPT(GPTConfig(**ckpt['model_args'])), settings['rank'],
                                                            settings['alpha'], 0.0, settings['targets']))
        found = ckpt['model']
        wrong = sorted(set(expected) ^ set(found)) + sorted(k for k in set(expected) & set(found)
                                                            if expected[k].shape != found[k].shape)
        if wrong:
            problems.append(f'its adapters do not match its LoRA settings ({len(wrong)} tensors missing, unexpected '
                            f'or wrongly shaped, e.g. {wrong[0]})')
    if problems:
        raise ValueError(f"the LoRA checkpoint is damaged or written by another program: {'; '.join(problems)}")
    return settings


def lora_base(ckpt, settings):
    """(base model, its Source) of a LoRA checkpoint: its base's weights as stored (a bf16 lora_base_dtype rounds
    them during training only, as sample.py's merge does not), with the adapter slots in place, B = 0."""
    base = settings['base']
    if not isinstance(base, str) or checkpoint.source_kind(base) != 'pretrained':
        raise ValueError(f'the LoRA run was trained on init_from={base!r}: export.py reads the base of a LoRA run '
                         'from pretrained weights (a GPT-2 name, a Hugging Face folder or hub id) only')
    model, source = checkpoint.load_model(base)
    have, want = checkpoint.model_args(model.config, full=True), GPTConfig(**ckpt['model_args'])
    changed = [k for k in checkpoint.LOCKED_KEYS if have[k] != getattr(want, k)]
    if changed:
        raise ValueError(f'{base} is not the base model of the LoRA run: its {changed[0]} is {have[changed[0]]!r}, '
                         f'the run trained on {getattr(want, changed[0])!r}; restore the base it was trained on')
    with torch.random.fork_rng(devices=[]):  # the A's drawn here are the checkpoint's or unused
        return lora.add_adapters(model, settings['rank'], settings['alpha'], 0.0, settings['targets']), source


def hf_folder(source):
    """The Hugging Face folder a model was read from (a hub id's snapshot), whose token ids and tokenizer files
    come along; None for a checkpoint or a GPT-2 name."""
    return source.path if source.ckpt is None and os.path.isdir(source.path) else None


def export_adapter(ckpt, settings, config, data_tokenizer):
    """The PEFT adapter folder of a LoRA checkpoint; its base is --base_to, written here, or the run's init_from."""
    base = settings['base']
    if config['base_to']:
        model, source = lora_base(ckpt, settings)
        lora.merge(model)  # B = 0, as add_adapters made it: the weights stay the base's
        arch = export_hf(model, config['base_to'], config['force'], hf_folder(source), data_tokenizer)
        print(f"wrote the base model to {config['base_to']}: a {arch}")
        base = os.path.abspath(config['base_to'])
    elif not isinstance(base, str) or checkpoint.source_kind(base) != 'pretrained':
        raise ValueError(f'the LoRA run was trained on init_from={base!r}, which no Hugging Face folder names: '
                         'write its base with --base_to=FOLDER')
    elif os.path.isdir(base):
        base = os.path.abspath(base)  # PEFT resolves a relative path from where it runs, not from the adapter
    elif base in PRETRAINED:
        base = f'openai-community/{base}'  # GPT-2's hub id
    arch = export_peft(GPTConfig(**ckpt['model_args']), ckpt['model'], settings['rank'], settings['alpha'],
                       settings['dropout'], config['to'], base, config['force'])
    n = sum(v.numel() for v in ckpt['model'].values())
    print(f"wrote {os.path.join(config['to'], 'adapter_config.json')} and adapter_model.safetensors: LoRA adapters "
          f"of rank {settings['rank']} ({n / 1e6:.2f}M parameters) for the {arch} {base}")


def main():
    config = configure(DEFAULTS, sys.argv[1:])
    if not config['to']:
        raise ValueError('say where to write the Hugging Face folder: --to=FOLDER, '
                         'e.g. python export.py --out_dir=out --to=hf/')
    ckpt = checkpoint.open_source(config['init_from'], config['out_dir']).ckpt
    is_lora = ckpt is not None and 'lora' in ckpt  # a LoRA run's: adapters and the base's identity
    if (config['adapter'] or config['base_to']) and not is_lora:
        what = f"the checkpoint in {config['out_dir']}" if ckpt is not None else config['init_from']
        raise ValueError(f'--adapter=True and --base_to export the adapters of a LoRA run (lora_rank > 0), and {what} '
                         'is not one: drop them to export the whole model')
    data_tokenizer = trained_tokenizer(ckpt) if ckpt is not None else None
    if is_lora:
        settings = lora_settings(ckpt)
        if config['adapter']:
            return export_adapter(ckpt, settings, config, data_tokenizer)
    # a LoRA checkpoint loads as its base (fingerprint checked) with the adapters merged: W + alpha / rank * B A
    model, source = checkpoint.load_model(config['init_from'], config['out_dir'])
    hf_source = hf_folder(source)
    arch = export_hf(model, config['to'], config['force'], hf_source, data_tokenizer)
    print(f"wrote {os.path.join(config['to'], 'config.json')} and model.safetensors: a {arch} of "
          f"{model.get_num_params(non_embedding=False) / 1e6:.2f}M parameters{' (base + LoRA adapters, merged)' if is_lora else ''}")
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
