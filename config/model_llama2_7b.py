# Llama-2-7B: 6,738,415,616 parameters (RMSNorm, rotary positions, SwiGLU with d_ff 11008, untied)
n_layer = 32
n_head = 32
n_embd = 4096
d_ff = 11008
block_size = 4096
vocab_size = 32000
norm = 'rmsnorm'
pos_emb = 'rope'
mlp = 'swiglu'
bias = False
tie_embeddings = False
