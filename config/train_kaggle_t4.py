# Kaggle's T4: the poems model of config/train_poems.py, grown to fill one 16 GB T4 for ~20 minutes
# (docs/guides/kaggle.md). A T4 has float16 tensor cores and no bfloat16, so dtype=auto picks
# float16 with a GradScaler; torch.compile is on by default on Linux with CUDA. Data comes from a
# Kaggle dataset under /kaggle/input, everything written goes to /kaggle/working (kept as the
# notebook's output):
#   python prepare.py poems --input /kaggle/input/tang-poems/tang-poems.jsonl --tokenizer=bpe --vocab_size=8192 --out_dir=/kaggle/working/data
#   python train.py config/train_kaggle_t4.py                                     # one T4
#   torchrun --standalone --nproc_per_node=2 train.py config/train_kaggle_t4.py    # both T4s of "GPU T4 x2"
# Two processes split each step's batch (the same tokens as one process: docs/scale-out.md), so the
# same settings run on one or two GPUs; two take about half the time a step.
out_dir = '/kaggle/working/out-poems-t4'
data_dir = '/kaggle/working/data'
dataset = 'poems'
arch = 'llama'
block_size = 256         # a whole poem and its chat prompt fit (128 cut long poems in SFT)
batch_size = 32          # 8,192 tokens a step
n_layer = 8
n_head = 8
n_embd = 512             # ~30M parameters: minutes on a T4, hours on a CPU
dropout = 0.1            # ~1 M tokens of poems: a model this size would memorize them without it
learning_rate = 1e-3
min_lr = 1e-4
max_iters = 3000
warmup_iters = 200
beta2 = 0.99
eval_interval = 250
eval_iters = 20
log_interval = 50
sample_prompt = '春夜\n'
