# Qwen2.5-0.5B (Qwen/Qwen2.5-0.5B): 494,032,768 parameters
# (Llama's architecture with biases on the q, k and v projections; 14 query heads sharing 2 key/value heads, tied)
n_layer = 24
n_head = 14
n_kv_head = 2
n_embd = 896
d_ff = 4864
block_size = 32768
vocab_size = 151936
norm = 'rmsnorm'
norm_eps = 1e-6
pos_emb = 'rope'
rope_theta = 1000000.0
mlp = 'swiglu'
bias = False
qkv_bias = True
tie_embeddings = True
