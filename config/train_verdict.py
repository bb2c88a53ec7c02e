# A small GPT on Edith Wharton's "The Verdict" (20 KB, ~5,100 GPT-2 tokens). Sized for a
# 2-core laptop CPU: 2,000 iters in a few minutes. The data is tiny, so the model ends up
# reciting the story (val loss bottoms out early; best.pt keeps that point) — the point is
# to watch every part of the pipeline work, end to end, quickly.
#   python train.py config/train_verdict.py --max_iters=2000
#   python sample.py --out_dir=out-verdict --start="I had always thought"
# LLaMA-style instead: add --arch=llama (RoPE, RMSNorm, SwiGLU, untied embeddings).
out_dir = 'out-verdict'
dataset = 'verdict'          # prepare.py makes data/verdict/ (GPT-2 BPE) on first use
# With GPT-2's 50,257-token vocabulary the output layer and its softmax are most of the
# work at this size, so few tokens per step keep a CPU step near 100 ms.
batch_size = 2
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
learning_rate = 1e-3
min_lr = 1e-4
max_iters = 2000
warmup_iters = 100
eval_interval = 200
eval_iters = 20
log_interval = 50
sample_prompt = 'I had always thought'
