# A character-level GPT on tiny shakespeare (1 MB, 65 distinct characters).
#   python train.py config/train_shakespeare_char.py
#   python sample.py --out_dir=out-shakespeare-char
# Sized for a CPU: 2,000 iters take about 4.5 minutes on 2 cores (~15k tokens/s), val loss 1.70.
# On a GPU try nanoGPT's "baby GPT": --n_layer=6 --n_head=6 --n_embd=384 --block_size=256
# --batch_size=64 --dropout=0.2 --learning_rate=1e-3 --max_iters=5000 (val loss ~1.47).
# LLaMA-style instead: add --arch=llama.
out_dir = 'out-shakespeare-char'
dataset = 'shakespeare_char'  # prepare.py makes data/shakespeare_char/ (char tokenizer) on first use
batch_size = 16
block_size = 128
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
learning_rate = 2e-3
min_lr = 2e-4
max_iters = 2000
warmup_iters = 100
weight_decay = 0.1
beta2 = 0.99                  # few tokens per step: a longer second-moment average is steadier
eval_interval = 250
eval_iters = 20
log_interval = 50
sample_prompt = '\n'
