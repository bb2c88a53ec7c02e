# Kaggle's T4: the poems of config/train_poems.py, with a longer context and a wider model that a
# 16 GB T4 runs in minutes (docs/guides/kaggle.md). A T4 has float16 tensor cores and no bfloat16,
# so dtype=auto picks float16 with a GradScaler; torch.compile is on by default (Linux, CUDA).
# Data comes from a Kaggle dataset under /kaggle/input; everything written goes to /kaggle/working,
# which Kaggle keeps as the notebook's output:
#   python prepare.py poems --input /kaggle/input/tang-poems/tang-poems.jsonl --tokenizer=bpe --han_chars --out_dir=/kaggle/working/data
#   python train.py config/train_kaggle_t4.py                                     # one T4
#   torchrun --standalone --nproc_per_node=2 train.py config/train_kaggle_t4.py --out_dir=/kaggle/working/out-poems-t4x2   # "GPU T4 x2"
# Two processes split each step's batch (the same tokens as one process: docs/scale-out.md), so the
# same settings run on one GPU or two. Not timed on a T4 here: a run is ~1.6M tokens through a
# ~17M-parameter model, about 0.2 PFLOP, which is minutes at a T4's float16 rate.
out_dir = '/kaggle/working/out-poems-t4'
data_dir = '/kaggle/working/data'
dataset = 'poems'
arch = 'llama'
block_size = 256         # a whole poem with its chat prompt fits (at 128, SFT cuts the long poems)
batch_size = 16          # 4,096 tokens a step
n_layer = 6
n_head = 6
n_embd = 384             # ~11M parameters in the blocks, ~4.7M in the two 6,056 x 384 embedding tables (--han_chars)
dropout = 0.2            # the corpus is ~342k tokens: ~5 passes over it, so regularise
learning_rate = 1e-3
min_lr = 1e-4
max_iters = 400
warmup_iters = 40
beta2 = 0.99
eval_interval = 50
eval_iters = 20
log_interval = 25
sample_prompt = '春夜\n'
