# GPT-2 XL (1.5B): 1,557,611,200 parameters
n_layer = 48
n_head = 25
n_embd = 1600
block_size = 1024
vocab_size = 50257
bias = True
