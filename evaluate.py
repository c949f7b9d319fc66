"""
Evaluate a model on a benchmark: HellaSwag's 10,042 validation examples, scored as llm.c and build-nanogpt
score them (see hellaswag.py), so that the figures compare with GPT-2's published ones.

    python evaluate.py --init_from=gpt2 --task=hellaswag          # GPT-2 124M: acc_norm 0.2955
    python evaluate.py --out_dir=out --max_examples=500           # your run's ckpt.pt, on a slice
    python evaluate.py --init_from=path/to/hf_folder --data=hellaswag_val.jsonl --json=True
    torchrun --standalone --nproc_per_node=8 evaluate.py --init_from=gpt2-xl   # split across GPUs
"""

import json
import sys
import time

import checkpoint
import hellaswag
import machine as machines
import tokenizer as tokenizers
from configurator import cli, configure

DEFAULTS = dict(
    init_from='resume',  # 'resume' (from out_dir/ckpt.pt), 'gpt2*', or a folder holding a Hugging Face GPT-2
    out_dir='out',
    data_dir='',  # the tokenizer's dataset (meta.pkl); '' means the checkpoint's data, or a folder's tokenizer.json
    task='hellaswag',
    data='',  # a local hellaswag_val.jsonl; '' downloads it once into $HELLASWAG_CACHE or ~/.cache/nanogpt/hellaswag
    max_examples=None,  # score only the first N examples; None for all
    device='auto',
    dtype='auto',
    json=False,  # print one JSON object on stdout instead of the sentence
)
TYPES_OF_NONE = {'max_examples': int}
TASKS = ('hellaswag',)


def check_options(cfg):
    if cfg['task'] not in TASKS:
        raise ValueError(f"task={cfg['task']!r} is not one of the tasks: {', '.join(TASKS)}")
    if cfg['max_examples'] is not None and cfg['max_examples'] < 1:
        raise ValueError(f"max_examples={cfg['max_examples']} must be at least 1 (or None for every example)")


def main(argv=None):
    cfg = configure(DEFAULTS, sys.argv[1:] if argv is None else argv, TYPES_OF_NONE)
    check_options(cfg)
    # compile=False: examples of varying lengths would recompile at every one
    machine = machines.setup(cfg['device'], cfg['dtype'], compile=False)
    try:
        result = run(cfg, machine)
    except BaseException:
        machines.teardown(finished=False)
        raise
    machines.teardown()
    return result


def run(cfg, machine):
    with checkpoint.master_first(machine):  # rank 0 downloads pretrained weights, the others read the cache
        model, source = checkpoint.load_model(cfg['init_from'], cfg['out_dir'])
    tokenizer = tokenizers.for_model(model, source, cfg['data_dir'])
    examples = hellaswag.checked_examples(tokenizer, cfg['data'], machine, cfg['max_examples'])
    model.to(machine.device)
    t0 = time.time()
    result = hellaswag.evaluate(model, tokenizer, examples, machine, progress=True)
    if machine.master:
        if cfg['json']:
            print(json.dumps(dict(result, task=cfg['task'], init_from=cfg['init_from'], device=machine.device,
                                  dtype=machine.dtype)))
        else:
            print(f"{cfg['task']}: acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f} over {result['n']} "
                  f"examples ({cfg['init_from']}, {machine.device}, {machine.dtype}, {time.time() - t0:.0f}s)")
    return result


if __name__ == '__main__':
    cli(main)
