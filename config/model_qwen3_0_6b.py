# Qwen3-0.6B (Qwen/Qwen3-0.6B): 596,049,920 parameters
# (Llama's architecture with RMSNorm on each head's queries and keys; 16 query heads of 128, not n_embd / n_head = 64,
# sharing 8 key/value heads; tied embeddings)
n_layer = 28
n_head = 16
head_size = 128
n_kv_head = 8
n_embd = 1024
d_ff = 3072
vocab_size = 151936
block_size = 40960
rope_theta = 1000000.0
pos_emb = 'rope'
norm = 'rmsnorm'
norm_eps = 1e-6
qk_norm = True
mlp = 'swiglu'
bias = False
tie_embeddings = True
