# Teach the poem model of config/train_poems.py to answer: chat records in which the user gives a
# title and the assistant writes the poem. Only the poems are learned (the loss masks the rest).
#   python finetune_sft.py config/sft_poems.py --data_file=tang-poems-chat.jsonl   # ~5.5 min on 2 CPU cores
#   python sample.py --out_dir=out-sft-poems --chat --start="请以《春夜》为题，写一首诗。"   # (system prompt: sample_system)
# The records are a local file, one a line:
#   {"messages": [{"role": "system", "content": "你是一位唐代诗人。"},
#                 {"role": "user", "content": "请以《春夜》为题，写一首诗。"}, {"role": "assistant", "content": "..."}]}
# made from the same tang-poems.jsonl as the base (README: "From a pretrained model to a chat").
# 5% of the records (235 poems, chosen by seed) are held out for the val loss and never trained on.
# LoRA instead of full fine-tuning: --lora_rank=8 --learning_rate=2e-3 --out_dir=out-sft-poems-lora
# (add gate_proj to lora_targets for this LLaMA-style base)
out_dir = 'out-sft-poems'
base_dir = 'out-poems'
data_file = 'data/tang-poems-chat.jsonl'
val_fraction = 0.05
batch_size = 8
learning_rate = 1e-3     # high for a fine-tune: this small model also goes on learning the poems themselves
min_lr = 1e-4
max_iters = 2000         # ~3.4 passes over the records (~5.5 min on 2 CPU cores). Held-out titles answered in 5- or
                         # 7-character verse ended by <|im_end|> (python bench.py poems: 235 titles, one sample each,
                         # sample.py's defaults): base 0%, this 73% (172). With a base on a bpe of words (no --han_chars)
                         # 43% at 2000 iters and 57% at 2600; with block_size=128 as well, 31%
warmup_iters = 30
eval_interval = 300
eval_iters = 10
log_interval = 50
sample_prompt = '请以《春夜》为题，写一首诗。'
sample_system = '你是一位唐代诗人。'
