# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M), a Llama-architecture model: 134,515,008 parameters
# (RMSNorm, rotary positions, SwiGLU, 9 query heads sharing 3 key/value heads, tied embeddings)
n_layer = 30
n_head = 9
n_kv_head = 3
n_embd = 576
d_ff = 1536
block_size = 8192
vocab_size = 49152
norm = 'rmsnorm'
norm_eps = 1e-5
pos_emb = 'rope'
rope_theta = 100000.0
mlp = 'swiglu'
bias = False
tie_embeddings = True
