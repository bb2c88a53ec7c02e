# A small LLaMA-style model on 5,003 Tang poems (1.07 MB of text, ~285k bpe tokens): the base
# that config/sft_poems.py teaches to answer "write a poem titled X". Sized for a 2-core CPU.
# The data is a local file, one poem a line: {"text": "title\nauthor\nline\nline..."} (README:
# "From a pretrained model to a chat" says where to get it).
#   python prepare.py poems --input tang-poems.jsonl --tokenizer=bpe --vocab_size=8192
#   python train.py config/train_poems.py
#   python sample.py --out_dir=out-poems --start="春夜"
# The bpe keeps runs of Chinese characters together (3.5 bytes a token) and reserves the chat
# tokens <|im_start|> and <|im_end|>, so the fine-tune needs no new rows.
out_dir = 'out-poems'
dataset = 'poems'
arch = 'llama'
block_size = 128         # a poem is ~45 tokens (median); in the SFT chat the prompt (system + request) takes ~64,
                         # so 75% of the records fit whole and a reply has ~64 tokens (256 would fit all, at ~2x the time)
batch_size = 8
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.1            # ~4 passes over a small corpus: some regularisation helps the val loss
learning_rate = 2e-3
min_lr = 2e-4
max_iters = 1000
warmup_iters = 100
beta2 = 0.99             # few tokens per step: a longer second-moment average is steadier
eval_interval = 200
eval_iters = 20
log_interval = 50
sample_prompt = '春夜\n'  # a title, then the model writes an author and the lines
