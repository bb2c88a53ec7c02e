"""Put this folder first on PYTHONPATH to run nanolm as if none of its optional packages were
installed (CI's first pass: `PYTHONPATH=tests/without_extras python -m pytest tests`). Each of
them then fails to import, as it does on a machine without it; subprocesses inherit this too."""
import importlib.abc
import sys

OPTIONAL = {'matplotlib', 'safetensors', 'transformers', 'tokenizers', 'huggingface_hub', 'wandb', 'swanlab', 'gguf',
            'sentencepiece', 'fastapi', 'starlette', 'uvicorn', 'httpx', 'openai', 'selenium', 'playwright', 'lm_eval',
            'accelerate'}


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in OPTIONAL:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return None


sys.meta_path.insert(0, _Absent())
