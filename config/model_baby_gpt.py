# the baby GPT of nanoGPT's shakespeare_char recipe: 6 layers, 6 heads, 384 wide, context 256 (10.65M parameters)
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
dropout = 0.2
