# GPT-2 medium (355M): 354,823,168 parameters
n_layer = 24
n_head = 16
n_embd = 1024
block_size = 1024
vocab_size = 50257
bias = True
