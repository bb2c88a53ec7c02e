#!/bin/bash
# nanolm beside nanoGPT on one GPU, in one go: the GPU tests, step times at nanoGPT's two shapes,
# gradient checkpointing on and off, torch.profiler tables, the GPU recipe's time to nanoGPT's loss.
# Layout (cwd): after/ (this branch), before/ (main, plus train.py's --profile), nanogpt/ (karpathy/nanoGPT),
# each with data/shakespeare_char prepared. Everything lands in $OUT/log.txt and $OUT/results.tgz.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
W=$(pwd); R=/tmp/r; mkdir -p $R; T0=$(date +%s); BUDGET=${BUDGET:-430}
el() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
save() { tar -czf $OUT/results.tgz -C /tmp r 2>/dev/null; }
el "machine"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv
python3 -c "import torch,sys;print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
nproc

el "GPU tests (after/)"
cd $W/after && timeout 110 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -25

el "char shape: nanoGPT train.py config/train_shakespeare_char.py, 300 iters"
cd $W/nanogpt && timeout 100 python3 train.py config/train_shakespeare_char.py --max_iters=300 --eval_interval=250 --out_dir=/tmp/ng-char > $R/ng-char.txt 2>&1
grep -E "^step|^iter (10|100|200|290|300):" $R/ng-char.txt; save

el "char shape: nanolm main (before), the CPU speedrun recipe at nanoGPT's GPU shape, 300 iters, profile 20"
cd $W/before && timeout 100 python3 train.py config/train_shakespeare_char.py --n_layer=6 --n_head=6 --n_embd=384 --block_size=256 \
  --batch_size=64 --dropout=0.2 --max_iters=300 --eval_interval=300 --profile=20 --sample_prompt= --out_dir=/tmp/nl-before > $R/nl-before.txt 2>&1
tail -3 $R/nl-before.txt; cp /tmp/nl-before/profile.txt $R/prof-char-before.txt; cp /tmp/nl-before/log.jsonl $R/nl-before.jsonl
python3 $W/after/bench.py log /tmp/nl-before --target_loss=1.4697 | head -3; save

el "char shape: nanolm this branch (after), the same 300 iters, profile 20"
cd $W/after && timeout 100 python3 train.py config/train_shakespeare_char.py --n_layer=6 --n_head=6 --n_embd=384 --block_size=256 \
  --batch_size=64 --dropout=0.2 --max_iters=300 --eval_interval=300 --profile=20 --sample_prompt= --out_dir=/tmp/nl-after > $R/nl-after.txt 2>&1
tail -3 $R/nl-after.txt; cp /tmp/nl-after/profile.txt $R/prof-char-after.txt; cp /tmp/nl-after/log.jsonl $R/nl-after.jsonl
python3 bench.py log /tmp/nl-after --target_loss=1.4697 | head -3; save

el "GPU recipe: config/train_shakespeare_char_gpu.py"
cd $W/after && timeout 100 python3 train.py config/train_shakespeare_char_gpu.py --sample_prompt= --out_dir=/tmp/nl-recipe > $R/nl-recipe.txt 2>&1
grep -E "^eval" $R/nl-recipe.txt | tail -16; cp /tmp/nl-recipe/log.jsonl $R/nl-recipe.jsonl
python3 bench.py log /tmp/nl-recipe --target_loss=1.4697,1.5 | head -3; save

el "GPT-2 small shape: nanoGPT bench.py (batch 12 x 1024, bf16, compiled, bias=False, random data)"
cd $W/nanogpt && timeout 120 python3 bench.py --real_data=False > $R/ng-gpt2.txt 2>&1; grep -E "time per iteration|Error" $R/ng-gpt2.txt

el "GPT-2 small shape: nanolm bench.py step, compiled, bias=False (nanoGPT's) and gradient checkpointing, profile"
cd $W/after && timeout $(left) python3 bench.py step --device=cuda --batch_size=12 --dtype=bfloat16 --compile=True --bias=False \
  --steps=20 --profile=$R/prof-gpt2 2>&1 | tail -6; save

el "gradient checkpointing, eager, batch 12: main (before) and this branch (after)"
cd $W/before && timeout $(left) python3 bench.py step --device=cuda --batch_size=12 --dtype=bfloat16 --compile=False --gradient_checkpointing=False,True --steps=10 2>&1 | tail -5
cd $W/after && timeout $(left) python3 bench.py step --device=cuda --batch_size=12 --dtype=bfloat16 --compile=False --gradient_checkpointing=False,True --steps=10 --profile=$R/prof-ckpt 2>&1 | tail -5; save

el "gradient checkpointing, compiled (after)"
cd $W/after && timeout $(left) python3 bench.py step --device=cuda --batch_size=12 --dtype=bfloat16 --compile=True --gradient_checkpointing=True --steps=10 2>&1 | tail -4; save

el "summary"
python3 $W/after/notes/gpu/summary.py $R
save
