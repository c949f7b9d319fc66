"""Tests run offline on CPU: the shared offline assets (../shared) stand in for downloads."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')
sys.path.insert(0, ROOT)

if os.path.isdir(os.path.join(SHARED, 'tiktoken_cache')):
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', os.path.join(SHARED, 'tiktoken_cache'))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('WANDB_MODE', 'offline')

SHAKESPEARE = os.path.join(SHARED, 'data', 'tinyshakespeare', 'input.txt')
