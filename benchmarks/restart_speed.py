"""
The cost of torchrun's restart path (issue 27): seconds from a worker's death (SIGKILL) to the first step of the
resumed run, under `torchrun --standalone --max-restarts=1 --nproc_per_node=2 train.py ... --init_from=auto`.
Each repeat is a fresh run into a fresh out_dir; its output is read line by line and time-stamped.

    flock /tmp/timing.lock python benchmarks/restart_speed.py                       # the tiny model
    flock /tmp/timing.lock python benchmarks/restart_speed.py --preset=quick --data_dir=data/shakespeare_char
    flock /tmp/timing.lock python benchmarks/restart_speed.py --preset=gpt2 --repeats=2

Presets: 'tiny' is a 1-layer, 16-wide model on a stand-in corpus (the launcher's and the group's own cost);
'quick' is config/train_shakespeare_char_cpu.py's model (needs data/shakespeare_char prepared); 'gpt2' is GPT-2
small (124M parameters, 85M without the embeddings; block 256, batch 1) on the stand-in corpus. Printed per
repeat: the kill-to-first-step seconds, split at the moment the restarted run prints its model line (processes
started, group joined, checkpoint read), and the seconds of the run's first save (from its evaluation's line
to the save's: the cost of a time-based checkpoint); medians at the end.
"""

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = {
    'tiny': ['--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16', '--batch_size=2', '--eval_iters=2',
             '--dataset=tiny'],
    'quick': ['config/train_shakespeare_char_cpu.py', '--eval_iters=5'],
    'gpt2': ['config/model_gpt2.py', '--vocab_size=50304', '--block_size=256', '--batch_size=1', '--eval_iters=1',
             '--dataset=tiny', '--eval_interval=4'],
}


def tiny_data(folder):
    import pickle
    import numpy as np
    ids = np.random.default_rng(0).integers(0, 65, 50_000).astype(np.uint16)
    os.makedirs(folder)
    ids[:45_000].tofile(os.path.join(folder, 'train.bin'))
    ids[45_000:].tofile(os.path.join(folder, 'val.bin'))
    with open(os.path.join(folder, 'meta.pkl'), 'wb') as f:
        pickle.dump({'vocab_size': 65, 'dtype': 'uint16', 'tokenizer': 'char',
                     'stoi': {chr(32 + i): i for i in range(65)}, 'itos': {i: chr(32 + i) for i in range(65)}}, f)


def workers(agent):
    """The pids of the training processes a torchrun agent started (Linux /proc)."""
    return [int(pid) for task in os.listdir(f'/proc/{agent.pid}/task')
            for pid in open(f'/proc/{agent.pid}/task/{task}/children').read().split()]


def one_restart(preset, tmp, data_dir):
    argv = ['--eval_interval=20', *PRESETS[preset], '--device=cpu', '--compile=False', '--max_iters=100000',
            '--log_interval=1', '--init_from=auto', f'--out_dir={tmp}/out', '--gradient_accumulation_steps=2']
    argv.append(f'--data_dir={data_dir or tmp + "/data"}')
    agent = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--max-restarts=1',
                              '--nproc_per_node=2', 'train.py', *argv], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                             env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1'))  # lines as printed
    lines = []  # (time, line)
    reader = threading.Thread(target=lambda: lines.extend((time.time(), line) for line in agent.stdout))
    reader.start()
    try:
        while not any('saved checkpoint' in line for _, line in lines):  # the first checkpoint
            time.sleep(0.01)
            if agent.poll() is not None:
                raise RuntimeError('the run ended before its first checkpoint')
        time.sleep(0.5)
        killed = time.time()
        os.kill(max(workers(agent)), signal.SIGKILL)
        while True:
            after = [(t, line) for t, line in list(lines) if t > killed]
            models = [t for t, line in after if line.startswith('model:')]
            steps = [t for t, line in after if line.startswith('iter ') and models and t > models[0]]
            if steps:
                save = next(i for i, (_, line) in enumerate(lines) if 'saved checkpoint' in line)
                return models[0] - killed, steps[0] - killed, lines[save][0] - lines[save - 1][0]
            if agent.poll() is not None:
                raise RuntimeError('the run ended without a restart')
            time.sleep(0.01)
    finally:
        for pid in workers(agent):  # each in a process group of its own
            os.kill(pid, signal.SIGKILL)
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
        reader.join()


def main():
    options = dict(a[2:].split('=', 1) for a in sys.argv[1:])
    preset, repeats = options.get('preset', 'tiny'), int(options.get('repeats', 3))
    results = []
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            if not options.get('data_dir'):
                tiny_data(f'{tmp}/data')
            started, first_step, save = one_restart(preset, tmp, options.get('data_dir'))
        results.append(first_step)
        print(f'repeat {i + 1}: kill -> restarted run set up {started:.2f} s -> first step {first_step:.2f} s; '
              f'its first save took {save:.2f} s ({save / 1800:.3%} of the default 30-minute cadence)')
    print(f'{preset}: kill to first resumed step, median {statistics.median(results):.2f} s '
          f'({min(results):.2f}-{max(results):.2f}) over {repeats}')


if __name__ == '__main__':
    main()
