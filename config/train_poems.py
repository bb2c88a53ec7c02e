# A small LLaMA-style model on 5,003 Tang poems (1.07 MB of text, 342k bpe tokens): the base
# that config/sft_poems.py teaches to answer "write a poem titled X". Sized for a 2-core CPU.
# The data is a local file, one poem a line: {"text": "title\nauthor\nline\nline..."} (README:
# "From a pretrained model to a chat" says where to get it).
#   python prepare.py poems --input tang-poems.jsonl --tokenizer=bpe --han_chars
#   python train.py config/train_poems.py
#   python sample.py --out_dir=out-poems --start="春夜"
# --han_chars: the bpe gives each Chinese character one token (6,056 in all: the text runs out of
# merges before 8,192) and never one token to a word, so a line of 5 characters is 5 tokens. With
# words as tokens (the default) the fine-tune's replies miscounted their lines far more often
# (verse 43% against 73%, the same settings). It reserves the chat tokens <|im_start|> and
# <|im_end|>, so the fine-tune needs no new rows.
out_dir = 'out-poems'
dataset = 'poems'
arch = 'llama'
block_size = 192         # a poem is ~61 tokens (median; 10% over 125); in the SFT chat the prompt (system + request) takes ~65,
                         # so a reply has ~127: at 128 a quarter of the replies were cut before their end
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
