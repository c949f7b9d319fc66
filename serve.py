"""
Serve a model over HTTP: OpenAI's completions and chat completions API, and a web page to talk to it.

    python serve.py --out_dir=out-shakespeare-char                  # then open http://127.0.0.1:8000/
    python serve.py --init_from=gpt2 --port=8080 --max_batch=32
    python serve.py config/serve_mine.py --host=0.0.0.0 --api_key=SECRET     # or SERVE_API_KEY=SECRET

Any model sample.py reads (a run's checkpoint, GPT-2, a Hugging Face folder) with the same config files and
--key=value options; docs/serving.md has the API, the limits and the measurements.
"""

import ipaddress
import os
import sys

import checkpoint
import machine as machines
import tokenizer as tokenizers
from configurator import cli, configure

DEFAULTS = dict(
    init_from='resume',  # as sample.py: 'resume' (from out_dir), 'gpt2*', or a Hugging Face folder
    out_dir='out',
    data_dir='',  # where the tokenizer (meta.pkl) lives; '' means the checkpoint's data (GPT-2 BPE for gpt2*)
    device='auto',
    dtype='auto',
    host='127.0.0.1',  # another address than loopback serves the network: set an api_key
    port=8000,
    api_key='',  # '' reads $SERVE_API_KEY; when set, /v1/* requires "Authorization: Bearer <key>"
    model_name='',  # the model's id in the API; '' means the out_dir's or init_from's name
    max_batch=16,  # rows (completions) generated at once
    max_queue=64,  # requests waiting for a place in the batch; past this, 429 with Retry-After
    batch_wait=0.01,  # an idle engine starts once no request came for this many seconds (at most 10 times it)
    default_max_tokens=256,  # a request's max_tokens when it gives none
    max_tokens_limit=2048,  # larger max_tokens are cut to this
    truncate_prompts=False,  # a prompt longer than the context: False refuses it (400), True keeps its end
    max_body_bytes=1_000_000,  # larger request bodies get 413
)


def check_options(cfg):
    problems = [f'{key}={cfg[key]} must be at least 1' for key in
                ('max_batch', 'max_queue', 'default_max_tokens', 'max_tokens_limit', 'max_body_bytes') if cfg[key] < 1]
    if not 0 <= cfg['port'] <= 65535:
        problems.append(f"port={cfg['port']} must be in 0..65535")
    if cfg['batch_wait'] < 0:
        problems.append(f"batch_wait={cfg['batch_wait']} must be >= 0 seconds")
    if problems:
        raise ValueError('; '.join(problems))


def is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == 'localhost'


def main(argv=None):
    cfg = configure(DEFAULTS, sys.argv[1:] if argv is None else argv)
    cfg = cfg.replace(api_key=cfg['api_key'] or os.environ.get('SERVE_API_KEY', ''))
    check_options(cfg)
    import uvicorn  # the server's dependencies, read once the options are known to be good

    import serving
    from engine import Engine
    machine = machines.setup(cfg['device'], cfg['dtype'], compile=False)
    model, source = checkpoint.load_model(cfg['init_from'], cfg['out_dir'])
    tokenizer = tokenizers.for_model(model, source, cfg['data_dir'])
    model.eval().to(machine.device)
    name = cfg['model_name'] or os.path.basename(os.path.abspath(
        cfg['out_dir'] if checkpoint.source_kind(cfg['init_from']) == 'resume' else cfg['init_from']))
    engine = Engine(model, tokenizer, machine, cfg['max_batch'], cfg['max_queue'], cfg['batch_wait'],
                    tokenizer.stop_ids)
    app = serving.create_app(engine, tokenizer, name, cfg)
    if not cfg['api_key'] and not is_loopback(cfg['host']):
        print(f"warning: serving on {cfg['host']}, beyond this machine, with no API key: anyone who reaches it can "
              'use the model; set --api_key or $SERVE_API_KEY', file=sys.stderr)
    host = f"[{cfg['host']}]" if ':' in cfg['host'] else cfg['host']
    config = uvicorn.Config(app, host=cfg['host'], port=cfg['port'], access_log=False, log_level='warning',
                            timeout_graceful_shutdown=5)  # then open streams are cut: a stop never hangs
    server = uvicorn.Server(config)
    original_startup = server.startup

    async def startup(sockets=None):  # print the URL once the port is bound (port=0 picks a free one)
        await original_startup(sockets)
        port = server.servers[0].sockets[0].getsockname()[1] if server.servers else cfg['port']
        print(f'serving {name} ({source.name}) at http://{host}:{port}/  (OpenAI API under /v1)', flush=True)
    server.startup = startup
    try:
        server.run()
    finally:
        engine.close()


if __name__ == '__main__':
    cli(main)
