# finetune SmolLM2-135M (a Llama-architecture model from the Hugging Face hub) on Tiny Shakespeare, tokenized with
# SmolLM2's own tokenizer (tokenizer.json):
#   python data/shakespeare/prepare.py       # downloads data/shakespeare/input.txt when absent
#   python prepare.py data/shakespeare/input.txt --name=shakespeare_smollm2 --tokenizer=HuggingFaceTB/SmolLM2-135M
#   python train.py config/finetune_smollm2_shakespeare.py
#   python sample.py --out_dir=out-smollm2-shakespeare --start="ROMEO:"
#   python export.py --out_dir=out-smollm2-shakespeare --to=smollm2-shakespeare/   # a LlamaForCausalLM again

out_dir = 'out-smollm2-shakespeare'
eval_interval = 20
eval_iters = 20
log_interval = 1
wandb_log = False

dataset = 'shakespeare_smollm2'
init_from = 'HuggingFaceTB/SmolLM2-135M'  # or the path of a folder holding its config.json and model.safetensors

# save only when val loss improves
always_save_checkpoint = False

# 8 sequences x 4 micro-steps x 512 tokens = 16,384 tokens per iteration; the model's 8192-token context is
# cropped to 512 (rotary positions need no surgery)
block_size = 512
batch_size = 8
gradient_accumulation_steps = 4
max_iters = 100

# finetune at a constant small learning rate
learning_rate = 3e-5
decay_lr = False
weight_decay = 0.0
