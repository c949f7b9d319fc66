# evaluate OpenAI's gpt2-medium on OpenWebText (eval_only: no training)
# python train.py config/eval_gpt2_medium.py
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-medium'
