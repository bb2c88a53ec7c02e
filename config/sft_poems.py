# Teach the poem model of config/train_poems.py to answer: chat records in which the user gives a
# title and the assistant writes the poem. Only the poems are learned (the loss masks the rest).
#   python finetune_sft.py config/sft_poems.py --data_file=tang-poems-chat.jsonl   # ~11 min on one CPU thread
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
max_iters = 2000         # ~3.4 passes over the records (~11 min on one CPU thread). Held-out titles answered in 5- or
                         # 7-character verse ended by <|im_end|> (235 titles, one sample each, sample.py's defaults):
                         # base 0%, 1200 iters 21% (49), 2000 iters 31% (73); learning_rate=3e-3 at 1200 gave 13%
warmup_iters = 30
eval_interval = 300
eval_iters = 10
log_interval = 50
sample_prompt = '请以《春夜》为题，写一首诗。'
sample_system = '你是一位唐代诗人。'
