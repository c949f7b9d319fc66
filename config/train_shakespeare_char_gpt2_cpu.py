# nanoGPT's exact GPT-2 model on Tiny Shakespeare, characters, for a CPU: nanoGPT's README CPU recipe
# (LayerNorm, learned positions, GELU MLP, AdamW; 4 layers x 128, 2000 iterations). For the learner who wants
# the model of the GPT-2 paper rather than the quick start's modern variant: a couple of minutes on 2 cores,
# val loss 1.89 (docs/benchmarks.md).
# python train.py config/train_shakespeare_char_gpt2_cpu.py
# python sample.py --out_dir=out-shakespeare-char-gpt2-cpu

out_dir = 'out-shakespeare-char-gpt2-cpu'
eval_interval = 250
eval_iters = 20
log_interval = 50  # nanoGPT's recipe logs every iteration
always_save_checkpoint = False

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64  # context of up to 64 previous characters

# GPT-2's architecture, written out although most are GPTConfig's defaults
n_layer = 4
n_head = 4
n_embd = 128
norm = 'layernorm'
pos_emb = 'learned'
mlp = 'gelu'
bias = True  # GPT-2 has biases (nanoGPT's train.py, and so its recipe, leave them out)
dropout = 0.0

optimizer = 'adamw'
learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000  # = max_iters
min_lr = 1e-4  # learning_rate / 10
beta2 = 0.99  # a bit larger: few tokens per iteration
warmup_iters = 100

device = 'cpu'
compile = False
dtype = 'float32'  # as nanoGPT computes on a CPU
