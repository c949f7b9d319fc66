# the mini-GPT of the design notes: 131,392 parameters
# (vocab 512, d 64, 2 layers, 4 heads, d_ff 256, GELU, RMSNorm, rotary positions, no biases, tied embeddings)
n_layer = 2
n_head = 4
n_embd = 64
d_ff = 256
block_size = 32
vocab_size = 512
norm = 'rmsnorm'
pos_emb = 'rope'
mlp = 'gelu'
bias = False
tie_embeddings = True
