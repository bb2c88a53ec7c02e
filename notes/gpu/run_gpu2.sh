#!/bin/bash
# The second device run (after the profiles of run_gpu.sh): the GPU tests again, gradient checkpointing
# before/after, and the char shape side by side: nanoGPT, nanolm main, this branch (plain compile and
# CUDA graphs), then the GPU recipe. Same layout and outputs as run_gpu.sh.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
W=$(pwd); R=/tmp/r; mkdir -p $R; T0=$(date +%s); BUDGET=${BUDGET:-320}
el() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
left() { l=$(( BUDGET - ($(date +%s) - T0) )); [ $l -lt 5 ] && l=5; echo $l; }
save() { tar -czf $OUT/results.tgz -C /tmp r 2>/dev/null; }
CHAR="--n_layer=6 --n_head=6 --n_embd=384 --block_size=256 --batch_size=64 --dropout=0.2 --max_iters=200 --eval_interval=200 --sample_prompt="
el "machine"; nvidia-smi --query-gpu=name,clocks.sm,driver_version --format=csv,noheader

el "GPU tests (after/)"
cd $W/after && timeout 100 python3 -m pytest -q -n 12 -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15

el "char shape, 200 iters each, side by side: nanoGPT, nanolm main, this branch, this branch with CUDA graphs"
cd $W/nanogpt && timeout 60 python3 train.py config/train_shakespeare_char.py --max_iters=200 --eval_interval=1000 --out_dir=/tmp/ng-char > $R/ng-char2.txt 2>&1
cd $W/before && timeout 60 python3 train.py config/train_shakespeare_char.py $CHAR --out_dir=/tmp/b2 > $R/nl-before2.txt 2>&1; cp /tmp/b2/log.jsonl $R/nl-before2.jsonl
cd $W/after && timeout 60 python3 train.py config/train_shakespeare_char.py $CHAR --out_dir=/tmp/a2 > $R/nl-after2.txt 2>&1; cp /tmp/a2/log.jsonl $R/nl-after2.jsonl
cd $W/after && timeout 70 python3 train.py config/train_shakespeare_char.py $CHAR --compile_mode=reduce-overhead --out_dir=/tmp/g2 > $R/nl-graphs2.txt 2>&1; cp /tmp/g2/log.jsonl $R/nl-graphs2.jsonl
tail -2 $R/nl-graphs2.txt; python3 $W/after/notes/gpu/summary.py $R; save

el "GPU recipe with CUDA graphs"
cd $W/after && timeout 80 python3 train.py config/train_shakespeare_char_gpu.py --compile_mode=reduce-overhead --out_dir=/tmp/rg > $R/nl-recipe-graphs.txt 2>&1
cp /tmp/rg/log.jsonl $R/nl-recipe-graphs.jsonl; grep -E "^eval (5|6|7)" $R/nl-recipe-graphs.txt; tail -3 $R/nl-recipe-graphs.txt; save

el "gradient checkpointing, eager, batch 12, GPT-2 small: main (before), this branch (after)"
cd $W/before && timeout $(left) python3 bench.py step --device=cuda --batch_size=12 --dtype=bfloat16 --compile=False --gradient_checkpointing=False,True --steps=10 2>&1 | grep -E "^step"
cd $W/after && timeout $(left) python3 bench.py step --device=cuda --batch_size=12 --dtype=bfloat16 --compile=False --gradient_checkpointing=False,True --steps=10 --profile=$R/prof-ckpt 2>&1 | grep -E "^step"; save

el "gradient checkpointing, compiled (after)"
cd $W/after && timeout $(left) python3 bench.py step --device=cuda --batch_size=12 --dtype=bfloat16 --compile=True --gradient_checkpointing=True --steps=10 2>&1 | grep -E "^step"; save
el "summary"; python3 $W/after/notes/gpu/summary.py $R; save
