# Measures notes/tokenizers.md: TIKTOKEN_CACHE_DIR=../shared/data/tiktoken_cache python notes/tokenizer_speed.py
"""Encode speed: sp_tokenizer (ours, pure Python) vs the tokenizers package, on a Llama-2-style
32k SentencePiece-style BPE trained here; tiktoken's gpt2 for scale. One thread each."""
import json, os, sys, time
os.environ['RAYON_NUM_THREADS'] = '1'; os.environ['TOKENIZERS_PARALLELISM'] = 'false'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'tests')]
import tokenizers as tk, tiktoken
import hf, tokenizer
D = os.path.join(ROOT, '..', 'shared', 'data') + '/'
eng = open(D + 'tinyshakespeare.txt').read().split('\n\n')
zh = [json.loads(l)['text'] for l in open(D + 'tang-poems.jsonl')]
docs = {'english': eng, 'chinese': zh}
# a Llama-2-like tokenizer: <unk> <s> </s>, <0x00>..<0xFF>, ~32k learned pieces, byte fallback (its
# 60-character alphabet leaves most Chinese characters to byte fallback, as Llama 2 does for many)
from test_sp_tokenizer import sp_tokenizer_json
import test_sp_tokenizer as T
T.TRAIN = '\n'.join(eng + zh)
for form in ['legacy', ('first', True)]:
    folder = f'/tmp/sp_speed_{form if isinstance(form, str) else "_".join(map(str, form))}'
    t0 = time.time(); ref = sp_tokenizer_json(folder, form, vocab=32000); print('trained', round(time.time() - t0, 1), 's', ref.get_vocab_size())
    spec = hf.read_tokenizer(folder)
    for lang, ds in docs.items():
        nbytes = sum(len(d.encode()) for d in ds)
        t0 = time.perf_counter(); theirs = [ref.encode(d, add_special_tokens=False).ids for d in ds]; t_ref = time.perf_counter() - t0
        t0 = time.perf_counter(); theirs_b = ref.encode_batch(ds, add_special_tokens=False); t_batch = time.perf_counter() - t0
        tok = tokenizer.load(spec)  # a cold cache
        t0 = time.perf_counter(); ours = [tok.encode(d) for d in ds]; t_ours = time.perf_counter() - t0
        t0 = time.perf_counter(); ours2 = [tok.encode(d) for d in ds]; t_warm = time.perf_counter() - t0
        n = sum(map(len, ours))
        assert ours == theirs, 'ids differ'
        enc = tiktoken.get_encoding('gpt2')
        t0 = time.perf_counter(); g = enc.encode_ordinary_batch(ds, num_threads=1); t_tt = time.perf_counter() - t0
        print(f"{form} {lang}: {nbytes/1e6:.2f} MB, {n:,} tokens, identical ids. tok/s: ours {n/t_ours/1e6:.2f}M (again {n/t_warm/1e6:.2f}M), "
              f"tokenizers encode {n/t_ref/1e6:.2f}M, encode_batch(1 thread) {n/t_batch/1e6:.2f}M; tiktoken gpt2 {sum(map(len,g))/t_tt/1e6:.2f}M")
