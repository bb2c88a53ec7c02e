# Instruction tuning on 1,100 Alpaca records (instruction, optional input, output; a JSON array)
# from Sebastian Raschka's "Build a Large Language Model (From Scratch)", chapter 7, on a base with
# GPT-2's vocabulary. GPT-2's tokenizer has no chat tokens: <|im_start|> and <|im_end|> are added
# as ids 50257 and 50258 (two new embedding rows, started at the mean of the others), and the new
# checkpoint's tokenizer knows them.
#   python train.py config/train_verdict.py               # a small GPT-2-vocabulary base, minutes on a CPU
#   python finetune_sft.py config/sft_alpaca.py
#   python sample.py --out_dir=out-sft-alpaca --chat --start="Convert 45 kilometers to meters."
# The verdict base has read one short story, so expect the template and the shape of an answer,
# not good answers; from released GPT-2 weights (needs the folder, see hf.py) it is a real
# instruction model:  --init_from=hf:path/to/gpt2 --block_size=256
# The file is downloaded on first use; offline, put it at data/instruction-data.json yourself.
out_dir = 'out-sft-alpaca'
base_dir = 'out-verdict'
data_file = 'data/instruction-data.json'
data_url = 'https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json'
val_fraction = 0.1
batch_size = 4
learning_rate = 5e-4
min_lr = 5e-5
max_iters = 500
warmup_iters = 20
eval_interval = 100
eval_iters = 10
log_interval = 50
sample_prompt = 'Convert 45 kilometers to meters.'
