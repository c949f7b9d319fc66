# Llama-3.2-1B (meta-llama/Llama-3.2-1B): 1,235,814,400 parameters
# (RMSNorm, rotary positions with Llama 3's scaling, SwiGLU, 32 query heads sharing 8 key/value heads, tied)
n_layer = 16
n_head = 32
n_kv_head = 8
n_embd = 2048
d_ff = 8192
block_size = 131072
vocab_size = 128256
norm = 'rmsnorm'
norm_eps = 1e-5
pos_emb = 'rope'
rope_theta = 500000.0
rope_scaling = (32.0, 1.0, 4.0, 8192)  # factor, low_freq_factor, high_freq_factor, original context
mlp = 'swiglu'
bias = False
tie_embeddings = True
