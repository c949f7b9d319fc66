# TinyLlama-1.1B, a Llama-2-style model: 1,100,048,384 parameters
# (RMSNorm, rotary positions, SwiGLU with d_ff 5632, grouped-query attention with 4 key/value heads, untied)
n_layer = 22
n_head = 32
n_kv_head = 4
n_embd = 2048
d_ff = 5632
block_size = 2048
vocab_size = 32000
norm = 'rmsnorm'
pos_emb = 'rope'
rope_theta = 10000.0
mlp = 'swiglu'
bias = False
tie_embeddings = False
