# GPT-2 (124M): 124,439,808 parameters with vocab_size 50257, as OpenAI released it
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
vocab_size = 50257
bias = True
