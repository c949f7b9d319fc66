# GPT-2 large (774M): 774,030,080 parameters
n_layer = 36
n_head = 20
n_embd = 1280
block_size = 1024
vocab_size = 50257
bias = True
