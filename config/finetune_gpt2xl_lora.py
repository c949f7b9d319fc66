# finetune GPT-2 XL with LoRA on Tiny Shakespeare (GPT-2 BPE tokens; or --dataset=a chat dataset of prepare.py
# --format=chat): rank-8 adapters on every matrix of the blocks train, the base stays frozen in bf16. About 7.2 GB
# with batch 1 x 1024 (python sizing.py config/finetune_gpt2xl_lora.py), where full finetuning needs 31.6 GB.
# python train.py config/finetune_gpt2xl_lora.py

out_dir = 'out-gpt2xl-lora'
eval_interval = 5
eval_iters = 40
wandb_log = False

dataset = 'shakespeare'
init_from = 'gpt2-xl'
always_save_checkpoint = False

# 1 batch_size * 32 grad_accum * 1024 tokens = 32,768 tokens per iteration
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

lora_rank = 8
lora_alpha = 16.0  # the adapters are scaled by alpha / rank = 2
lora_base_dtype = 'bfloat16'  # needs bf16 autocast: dtype 'auto' picks it where the device has it
# adapters start at zero and are few: a larger learning rate than full finetuning's 3e-5
learning_rate = 2e-4
decay_lr = False
