# the quick start on a 4,096-token BPE of Tiny Shakespeare, after its config (the same model and optimizer):
# python prepare.py data/shakespeare_char/input.txt --name=shakespeare_bpe --tokenizer=bpe --vocab_size=4096
# python train.py config/train_shakespeare_char_cpu.py config/train_shakespeare_bpe_cpu.py
# python plot.py out-shakespeare-char-cpu out-shakespeare-bpe-cpu --y=bpb --x=seconds
# Each iteration costs more than the char model's (the 4,096-way lm_head), so it runs fewer of them: the same
# training time. Its val bits per byte beside the char model's: docs/benchmarks.md (your own BPE).

out_dir = 'out-shakespeare-bpe-cpu'
dataset = 'shakespeare_bpe'  # 64 tokens of context: about 200 characters
max_iters = 250  # the quick start's training time (its 450 iterations): docs/benchmarks.md
lr_decay_iters = 250  # = max_iters
