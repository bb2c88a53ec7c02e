# The GPU speedrun: nanoGPT's shakespeare-char GPU shape (6 layers x 384, 6 heads, block 256, batch 64,
# dropout 0.2) with the CPU speedrun's recipe (config/train_shakespeare_char.py): Muon, rotary
# positions, a linear LR decay over the run, a moving average of the weights. It reaches nanoGPT's
# 5,000-iter val loss (1.4697, nanoGPT's README) in a fraction of nanoGPT's training time on the same
# GPU (README, GPU; notes/gpu.md has the side-by-side numbers).
#   python train.py config/train_shakespeare_char_gpu.py
#   python bench.py train config/train_shakespeare_char_gpu.py --target_loss=1.4697
out_dir = 'out-shakespeare-char-gpu'
dataset = 'shakespeare_char'
# nanoGPT's shape
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
batch_size = 64
dropout = 0.2
pos_emb = 'rope'
bias = False
# the speedrun's optimizer: Muon on the block matrices, AdamW on embeddings and norms
muon = True
muon_lr = 0.025
learning_rate = 3e-3
beta2 = 0.99
weight_decay = 0.2
max_iters = 700
warmup_iters = 20
cooldown_frac = 1.0           # a linear decay to 0 over the whole run
min_lr = 0.0
ema_decay = 0.98
# the whole val split every 50 iters (not counted in the step times)
eval_full_val = True
eval_interval = 50
eval_iters = 4
log_interval = 50
# CUDA graphs: at this size a step's ~400 kernel launches cost the CPU more time than the GPU needs to
# run them; replayed as graphs, 9.2 ms a step against 14.0 ms with plain torch.compile (H200, notes/gpu.md)
compile_mode = 'reduce-overhead'
