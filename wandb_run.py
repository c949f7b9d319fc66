"""A run's records in Weights & Biases, for train.py with --wandb_log=True (runlog.Log imports it then only).

    run = wandb_run.start(cfg)     # the wandb module, its run started; run.log(record, step=...); run.finish()
"""

import os

from configurator import one_line


def start(cfg):
    try:
        import wandb
        # wandb waits 90 s for an unreachable server by default: a user should not wait that long for the error
        timeout = {} if 'WANDB_INIT_TIMEOUT' in os.environ else {'settings': wandb.Settings(init_timeout=30)}
        wandb.init(project=cfg['wandb_project'], name=cfg['wandb_run_name'], config=dict(cfg), **timeout)
    except Exception as e:
        raise ValueError(f'wandb_log=True, but wandb could not start ({one_line(e, 300)}): log in with `wandb login`, '
                         'or set WANDB_MODE=offline, or drop --wandb_log') from None
    return wandb
