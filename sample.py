"""
Sample from a trained model, or from OpenAI's GPT-2.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=3
    python sample.py --out_dir=out --start=FILE:prompt.txt --temperature=0 --out_file=samples.txt
    python sample.py --init_from=path/to/SmolLM2-135M-Instruct --start="What is rain?" --chat=True
    python sample.py --init_from=path/to/SmolLM2-135M-Instruct --chat=True    # a chat in the terminal (chat.py)

All samples are generated together as one batch, with a key/value cache; the first sample of
the batch is printed as it is generated, the others when the batch is done. With a Hugging Face
tokenizer (a model folder's, or the dataset's) a sample ends at its EOS or end of turn, which is
not printed, and generation ends when every sample has ended.
"""

import contextlib
import sys
import time

import torch

import checkpoint
import machine as machines
import tokenizer as tokenizers
from atomic import atomic_path
from configurator import cli, configure
from sampling import DEFAULTS, SEPARATOR, TYPES_OF_NONE, Streamer, check_options, print_now, prompt_ids


def until_stop(ids, start, stop_ids):
    """ids up to the first stop id at or after position start (the generated part), which is left out."""
    ends = [i for i in range(start, len(ids)) if ids[i] in stop_ids]
    return ids[:ends[0]] if ends else ids


def generate_samples(model, tokenizer, machine, cfg, write=print_now):
    """Generate cfg['num_samples'] continuations of the prompt as one batch on the machine and write them as
    they come; returns the list of sample texts (prompt included). Only ids the tokenizer decodes are sampled."""
    prompt = prompt_ids(tokenizer, cfg['start'], cfg['chat'], cfg['system'])
    if not prompt:
        raise ValueError('the prompt is empty: give one with --start=TEXT or --start=FILE:path')
    if len(prompt) > model.config.block_size:
        raise ValueError(f'the prompt is {len(prompt)} tokens long, more than the model\'s context of '
                         f'{model.config.block_size}: shorten it')
    idx = torch.tensor(prompt, dtype=torch.long, device=machine.device)[None].repeat(cfg['num_samples'], 1)
    streamer = Streamer(tokenizer, prompt, write, cfg['num_samples'])
    write(tokenizer.decode(prompt))
    t0 = time.time()
    with machine.autocast():
        out = model.generate(idx, cfg['max_new_tokens'], temperature=cfg['temperature'], top_k=cfg['top_k'],
                             top_p=cfg['top_p'], on_token=streamer, vocab_size=tokenizer.vocab_size)
    dt, steps = time.time() - t0, out.size(1) - len(prompt)
    print(f"({cfg['num_samples']} x {steps} tokens in {dt:.1f}s, {cfg['num_samples'] * steps / max(dt, 1e-9):.0f} "
          'tokens/s)', file=sys.stderr)
    samples = [tokenizer.decode(until_stop(row.tolist(), len(prompt), tokenizer.stop_ids)) for row in out]
    write(samples[0][streamer.printed:] + '\n' + SEPARATOR + '\n')
    for text in samples[1:]:
        write(text + '\n' + SEPARATOR + '\n')
    return samples


def main(argv=None):
    cfg = configure(DEFAULTS, sys.argv[1:] if argv is None else argv, TYPES_OF_NONE)
    check_options(cfg)
    machine = machines.setup(cfg['device'], cfg['dtype'], cfg['compile'])
    model, source = checkpoint.load_model(cfg['init_from'], cfg['out_dir'])
    tokenizer = tokenizers.for_model(model, source, cfg['data_dir'])
    model.eval().to(machine.device)
    if machine.compile:
        model.compile()  # in place, so that generate's calls to the model run compiled
    torch.manual_seed(cfg['seed'])
    if cfg['chat'] and not (cfg['start'] and 'start' in cfg.given):
        import chat  # the interactive chat: its own module, for its runs only
        return chat.talk(model, tokenizer, machine, cfg)
    # the output file is opened before generating, so that a path that cannot be written fails at once
    with atomic_path(cfg['out_file']) if cfg['out_file'] else contextlib.nullcontext() as out_tmp:
        samples = generate_samples(model, tokenizer, machine, cfg)
        if out_tmp:
            with open(out_tmp, 'w', encoding='utf-8') as f:
                f.write(''.join(text + '\n' + SEPARATOR + '\n' for text in samples))
    return samples


if __name__ == '__main__':
    cli(main)
