"""
Export a checkpoint as a Hugging Face model folder, for transformers, vLLM, or llama.cpp's converter,
or as one GGUF file for llama.cpp and Ollama (gguf_export.py; needs pip install gguf):

    python export.py --out_dir=out-poems --to=hf_out/
    python export.py --out_dir=out-poems --to=model.gguf --dtype=float16     # or --gguf_type=q8_0
    python -c "from transformers import pipeline; print(pipeline('text-generation', 'hf_out')('Hello')[0])"

GPT-2-family checkpoints become GPT2LMHeadModel, LLaMA-family ones LlamaForCausalLM (Qwen2's q, k, v
biases too, with a zero o_proj bias), Qwen3's (qk_norm) Qwen3ForCausalLM; LoRA adapters are merged first. The tokenizer goes along (tokenizer.json, and GPT-2's vocab.json +
merges.txt for gpt2), with the chat template in tokenizer_config.json for SFT checkpoints (a released
Qwen model's own template, kept through fine-tuning).
A model no Hugging Face class computes exactly (e.g. GPT-2 with rope) is refused in one line.
Needs the safetensors package (pip install safetensors); transformers is not needed.
"""
import os

import cli  # first: one-line errors, even during the torch import
from cli import die
from configurator import configure

# ----------------------------------------------------------------------------- settings
out_dir = 'out'           # where train.py (or finetune_sft.py) wrote the checkpoint
ckpt = 'ckpt.pt'          # ckpt.pt (latest) or best.pt (lowest val loss)
to = ''                   # the folder to write the Hugging Face model into (required)
dtype = 'float32'         # of the weights written: 'float32', 'bfloat16' or 'float16'
overwrite = False         # write into a `to` folder that already has files in it (or over a .gguf file)
gguf_type = ''            # --to=*.gguf only: 'q8_0' = 8-bit matrices (~1/4 of float32); '' = --dtype
gguf_pre = ''             # --to=*.gguf only: llama.cpp's pre-split name for a BPE whose split it does not know
configure(globals())
# -----------------------------------------------------------------------------

if to.endswith('.gguf'):  # a GGUF file for llama.cpp / Ollama (gguf_export.py), not a folder
    if dtype not in ('float32', 'bfloat16', 'float16') or gguf_type not in ('', 'q8_0'):
        die(f"dtype={dtype!r} must be 'float32', 'bfloat16' or 'float16', gguf_type={gguf_type!r} '' or 'q8_0'")
    if os.path.exists(to) and not overwrite:
        die(f"{to} already exists; pass --overwrite=True to write over it, or pick another --to")
    path = os.path.join(out_dir, ckpt)
    if not os.path.isfile(path):
        die(f"checkpoint {path} not found; pass the --out_dir (and --ckpt) of a training run")
    from checkpoint import load_checkpoint
    import gguf_export
    try:
        n, arch = gguf_export.export_gguf(load_checkpoint(path), to + '.tmp', gguf_type or dtype,
                                          name=os.path.basename(os.path.abspath(out_dir)), pre=gguf_pre or None)
    except ValueError as e:
        die(str(e))
    os.replace(to + '.tmp', to)  # whole or not at all: a failed write leaves no half file under the name
    print(f"wrote {to}: {arch}, {n} tensors, {gguf_type or dtype}")
    print(f"run it: llama-cli -m {to} -p 'Hello'   or in Ollama: a Modelfile with 'FROM ./{os.path.basename(to)}'")
    raise SystemExit(0)
if not to:
    die("--to=<folder> is required: where to write the Hugging Face model")
if dtype not in ('float32', 'bfloat16', 'float16'):
    die(f"dtype={dtype!r} must be 'float32', 'bfloat16' or 'float16'")
if os.path.isdir(to) and os.listdir(to) and not overwrite:
    die(f"{to} already has files in it; pass --overwrite=True to write over them, or pick another --to")
if os.path.exists(to) and not os.path.isdir(to):
    die(f"{to} is a file, not a folder")
path = os.path.join(out_dir, ckpt)
if not os.path.isfile(path):  # checked before the slow torch import
    die(f"checkpoint {path} not found; pass the --out_dir (and --ckpt) of a training run")

from checkpoint import load_checkpoint
import hf

ck = load_checkpoint(path)
if ck.get('lora'):  # a finetune_sft.py run with LoRA: its adapters folded into the weights they adapt
    from checkpoint import load_model
    merged = load_model(out_dir, ckpt)[0].state_dict()
    ck = {**{k: v for k, v in ck.items() if k not in ('lora', 'ema')}, 'model': merged}
names = hf.export_hf(ck, to, dtype=dtype)
print(f"wrote {to}/: {', '.join(names)}")
print(f"load it with transformers: AutoModelForCausalLM.from_pretrained({to!r}); "
      f"for llama.cpp: python convert_hf_to_gguf.py {to} --outfile model.gguf")
