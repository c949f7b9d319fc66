# GPT-2 (124M) on FineWeb-Edu's 10B-token sample, llm.c's recipe: one pass over the data
# python data/fineweb_edu/prepare.py
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_fineweb.py

out_dir = 'out-gpt2-fineweb'
wandb_log = True
wandb_project = 'fineweb'
wandb_run_name = 'gpt2-124M'

dataset = 'fineweb_edu'
# 64 batch size * 1024 block size * 8 gradaccum = 524,288 tokens per step (2**19, ~0.5M, GPT-3 small's batch);
# gradient_accumulation_steps counts all processes: one micro-step each on 8 GPUs of 80 GB
# (on 40 GB GPUs: batch_size = 32 and gradient_accumulation_steps = 16, the same tokens per step)
batch_size = 64
block_size = 1024
gradient_accumulation_steps = 8

# 10B tokens: 10e9 / 524,288 = 19,073 steps, the cosine reaching its end at the last one
max_iters = 19073
lr_decay_iters = 19073
learning_rate = 6e-4  # GPT-3 small's peak
min_lr = 6e-5  # cosine to 0.1x the peak, as build-nanogpt
warmup_iters = 700  # llm.c's: ~370M tokens, about GPT-3's 375M
weight_decay = 0.1

eval_interval = 250  # ~130M tokens between evaluations, as llm.c
eval_iters = 160  # 160 batches of 64 x 1024 per split: ~10M tokens, 20 batches per GPU as llm.c
log_interval = 10
