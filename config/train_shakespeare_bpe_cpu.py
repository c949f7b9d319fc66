# a small GPT on Tiny Shakespeare, characters, for a CPU: about 18 s on 2 cores, val loss about 1.87
# python train.py config/train_shakespeare_char_cpu.py
# python sample.py --out_dir=out-shakespeare-char-cpu
# nanoGPT's README CPU recipe (4 layers x 128, GPT-2 blocks, AdamW, 2000 iterations) ends at val loss 1.886
# after ~75 s on the same 2 cores; this one gets below 1.88 in under a quarter of that by giving up depth for
# modern blocks, by training the block matrices with Muon (fewer steps to the same loss) and by evaluating
# only at the start and the end. How it was chosen: docs/benchmarks.md (training; issue 14 part 3).

out_dir = 'out-shakespeare-bpe-cpu'
eval_interval = 450  # evaluate at the start and at the end only: an evaluation costs ~1 s here
eval_iters = 50  # 50 x 16 x 64 = 51k tokens of each split (val.bin has 112k)
log_interval = 50
always_save_checkpoint = False

dataset = 'shakespeare_bpe'
gradient_accumulation_steps = 1
batch_size = 16
block_size = 64  # context of up to 64 previous characters

# 2 layers of modern blocks learn faster per second here than nanoGPT's 4 GPT-2 blocks (0.4M parameters)
n_layer = 2
n_head = 4
n_embd = 128
norm = 'rmsnorm'
pos_emb = 'rope'  # rotary positions: the largest gain of the three
mlp = 'swiglu'
d_ff = 352  # ~8/3 x n_embd (rounded to a multiple of 32): as many MLP weights as GELU's 4 x n_embd
dropout = 0.0  # too short a run to overfit
bias = False

# Muon for the 8 matrices in the blocks: 450 iterations end at val 1.87 where AdamW needs 600 for 1.88,
# but each is ~30% dearer (5 Newton-Schulz iterations per matrix and step): about the same seconds
optimizer = 'muon'
muon_lr = 0.02
learning_rate = 2e-3  # AdamW's, for the embedding (tied with lm_head) and the norm gains
max_iters = 450  # 400 end at val 1.91
lr_decay_iters = 450  # = max_iters
min_lr = 1e-4
beta2 = 0.99  # a bit larger: few tokens per iteration
warmup_iters = 50

device = 'cpu'
compile = False  # compiling takes longer than this whole run
dtype = 'float32'  # a model this small gains nothing from bf16 autocast, even on CPUs that have it
