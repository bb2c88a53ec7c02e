# The speedrun: a character-level GPT on tiny shakespeare (1 MB, 65 distinct characters) to val
# loss 1.886 as fast as a 2-core CPU allows. nanoGPT's CPU "baby GPT" (4 x 128, 2,000 iters) ends
# at 1.898 on the whole val split after 135 s of training on our 2-core EPYC; this recipe passes
# 1.886 after ~21 s and ends at ~1.82 after ~25 s (README, Performance).
# Val loss here is on the whole val split, every token once, in windows of block_size
# (eval_full_val), so the time to a loss can be read from the run's own log.jsonl:
#   python train.py config/train_shakespeare_char.py
#   python bench.py log out-shakespeare-char --target_loss=1.886
#   python sample.py --out_dir=out-shakespeare-char --start="ROMEO:"
# Each choice below was measured against its alternative: the README's ablation table.
out_dir = 'out-shakespeare-char'
dataset = 'shakespeare_char'  # prepare.py makes data/shakespeare_char/ (char tokenizer) on first use
# model: 2 layers x 128 wide (0.39M parameters). On a CPU a step costs in proportion to the
# parameters, and a run this short is won by the small model (4 layers: 44 s to 1.886, not 25).
n_layer = 2
n_head = 4
n_embd = 128
pos_emb = 'rope'              # rotary positions (learned positions: 1.97 at the end, not 1.86)
bias = False
dropout = 0.0
# 3,072 tokens a step, as 48 windows of 64: more, shorter windows learned faster than 24 x 128,
# 12 x 256 or 96 x 32, and Muon's fixed cost per step is paid on enough tokens (batch 12: slower)
block_size = 64
batch_size = 48
# optimizer: Muon on the block matrices (AdamW there: 2.05 at the end), AdamW on embeddings and
# norms; a short warmup, the LR held, then a linear decay to 0 over the last 30% (a cosine gets to
# 1.886 about as soon, and ends higher)
muon = True
muon_lr = 0.05
learning_rate = 6e-3          # AdamW's (embeddings, norms)
beta2 = 0.99
weight_decay = 0.0            # a run this short does not overfit
max_iters = 180
warmup_iters = 8
cooldown_frac = 0.3
min_lr = 0.0
# eval: the whole val split every 10 iters (~1.5 s each, not counted in the step times)
eval_full_val = True
eval_interval = 10
eval_iters = 4                # (train loss at each eval: a few batches are enough)
log_interval = 10
sample_prompt = '\n'
