"""Qwen3 and Qwen2.5 (hf.py, model.py's head_dim / qk_norm, chat.py's formats) and the size presets:
tiny random models built with transformers load with the same logits and greedy tokens, go back out
through export.py, and run in sample.py, finetune_sft.py (LoRA) and finetune_cls.py; the chat
formats give the ids of the folders' own chat_template through apply_chat_template; what we do not
implement (experts, sliding windows, other rope scalings) is refused naming the field; the size
presets count as many parameters as transformers' models of the same shape. All offline."""
import json
from dataclasses import asdict

import pytest
import torch

from conftest import make_chats, run
from checkpoint import load_model
from test_hf import assert_same_model, need, randomize, write_folder
import chat_data as chat
import hf
import tokenizer
from model import GPT, SIZES, add_lora, make_config, merge_lora, size_config

# Qwen2.5-Instruct's chat_template and Qwen3's (as their tokenizer_config.json files have them), as data.
QWEN25_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided "
    "with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")
QWEN3_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0].role == 'system' %}\n"
    "        {{- messages[0].content + '\\n\\n' }}\n    {%- endif %}\n"
    "    {{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n"
    "{%- for message in messages[::-1] %}\n    {%- set index = (messages|length - 1) - loop.index0 %}\n"
    "    {%- if ns.multi_step_tool and message.role == \"user\" and message.content is string and "
    "not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}\n"
    "        {%- set ns.multi_step_tool = false %}\n        {%- set ns.last_query_index = index %}\n    {%- endif %}\n"
    "{%- endfor %}\n{%- for message in messages %}\n    {%- if message.content is string %}\n"
    "        {%- set content = message.content %}\n    {%- else %}\n        {%- set content = '' %}\n    {%- endif %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {%- set reasoning_content = '' %}\n"
    "        {%- if message.reasoning_content is string %}\n"
    "            {%- set reasoning_content = message.reasoning_content %}\n        {%- else %}\n"
    "            {%- if '</think>' in content %}\n"
    "                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1]"
    ".lstrip('\\n') %}\n                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
    "            {%- endif %}\n        {%- endif %}\n        {%- if loop.index0 > ns.last_query_index %}\n"
    "            {%- if loop.last or (not loop.last and reasoning_content) %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + "
    "'\\n</think>\\n\\n' + content.lstrip('\\n') }}\n            {%- else %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n' + content }}\n            {%- endif %}\n"
    "        {%- else %}\n            {{- '<|im_start|>' + message.role + '\\n' + content }}\n        {%- endif %}\n"
    "        {%- if message.tool_calls %}\n            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and content) or (not loop.first) %}\n                    {{- '\\n' }}\n"
    "                {%- endif %}\n                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n                {%- endif %}\n"
    "                {{- '<tool_call>\\n{\"name\": \"' }}\n                {{- tool_call.name }}\n"
    "                {{- '\", \"arguments\": ' }}\n                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n            {%- endfor %}\n        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n"
    "        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n{%- endif %}")

QWEN_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
CORPUS = ("Hello world! It's a test, isn't it? the cat sat on the mat. 床前明月光，疑是地上霜。举头望明月。 "
          "what does the cat see? the cat sees the river.\n\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
          "assistant. system user assistant think 1234 🎉 def f(x): return x\n")
SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']

# Shapes transformers builds (vocab 448 leaves room for the tokenizer's ~330 ids).
CONFIGS = {
    # head_dim 16 while hidden / heads = 8; GQA 4 -> 2; tied and untied
    'qwen3-tied': lambda tf: tf.Qwen3Config(vocab_size=448, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                            max_position_embeddings=64, rope_theta=1000.0, tie_word_embeddings=True),
    'qwen3-untied': lambda tf: tf.Qwen3Config(vocab_size=448, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                              num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                                              max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False),
    'qwen2.5': lambda tf: tf.Qwen2Config(vocab_size=448, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                         rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
                                         sliding_window=32, max_window_layers=1),
}


def qwen_tokenizer(folder, family):
    """A small byte-level BPE shaped like Qwen's (NFC, Qwen's split regex, ByteLevel), with Qwen's chat
    tokens (and Qwen3's <think> and </think>, as non-special added tokens like the released file has
    them) and the family's chat_template in tokenizer_config.json."""
    tk = need('tokenizers')
    pre = tk.pre_tokenizers
    t = tk.Tokenizer(tk.models.BPE())
    t.normalizer = tk.normalizers.NFC()
    t.pre_tokenizer = pre.Sequence([pre.Split(tk.Regex(QWEN_PAT), 'isolated'),
                                    pre.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, initial_alphabet=pre.ByteLevel.alphabet(),
                                     show_progress=False)
    t.train_from_iterator([CORPUS] * 20, trainer)
    if family == 'qwen3':
        t.add_tokens([tk.AddedToken(s, special=False, normalized=False) for s in ('<think>', '</think>')])
    folder.mkdir(exist_ok=True)
    t.save(str(folder / 'tokenizer.json'))
    tc = {'tokenizer_class': 'PreTrainedTokenizerFast', 'eos_token': '<|im_end|>', 'pad_token': '<|endoftext|>',
          'bos_token': None, 'clean_up_tokenization_spaces': False, 'model_max_length': 64,
          'chat_template': QWEN3_TEMPLATE if family == 'qwen3' else QWEN25_TEMPLATE}
    (folder / 'tokenizer_config.json').write_text(json.dumps(tc))
    return t


@pytest.fixture(scope='module', params=sorted(CONFIGS))
def folder(request, tmp_path_factory):
    """(name, a saved random model folder with its tokenizer, transformers' model of it)."""
    tf = need('transformers')
    need('safetensors')
    name = request.param
    path = tmp_path_factory.mktemp(name)
    randomize(tf.AutoModelForCausalLM.from_config(CONFIGS[name](tf))).save_pretrained(path)
    qwen_tokenizer(path, name.split('-')[0])
    theirs = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return name, path, theirs


def load(path):
    cfg, state, spec = hf.load_hf(str(path))
    model = GPT(cfg).eval()
    model.load_state_dict(state)
    return model, spec


def test_loads_with_the_same_logits_and_greedy_tokens(folder):
    name, path, theirs = folder
    ours, spec = load(path)
    c, hc = ours.cfg, theirs.config
    assert c.qk_norm == name.startswith('qwen3') and c.qkv_bias == (name == 'qwen2.5')
    assert c.head_dim == getattr(hc, 'head_dim', None) or hc.hidden_size // hc.num_attention_heads
    assert c.tie_embeddings == hc.tie_word_embeddings and c.n_kv_head == hc.num_key_value_heads
    assert_same_model(theirs, ours, 448)  # float32 logits within 1e-4, 32 greedy tokens equal
    assert spec['chat'] == name.split('-')[0]


def test_export_round_trip(folder, tmp_path):
    """load_hf -> a checkpoint -> export_hf: transformers loads it with the same logits; the chat
    template and its format come back too."""
    tf = need('transformers')
    name, path, theirs = folder
    ours, spec = load(path)
    ck = {'model': ours.state_dict(), 'model_config': asdict(ours.cfg), 'tokenizer': spec, 'config': {}}
    hf.export_hf(ck, tmp_path)
    again = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    want = 'Qwen3ForCausalLM' if name.startswith('qwen3') else 'LlamaForCausalLM'  # (Qwen2's q/k/v biases: Llama's attention_bias)
    assert type(again).__name__ == want
    assert_same_model(again, ours, 448)
    x = torch.randint(0, 448, (1, 12))
    with torch.no_grad():
        assert (again(x).logits - theirs(x).logits).abs().max() < 1e-4
    tc = json.loads((tmp_path / 'tokenizer_config.json').read_text())
    assert tc['chat_template'] == (QWEN3_TEMPLATE if name.startswith('qwen3') else QWEN25_TEMPLATE)
    back = hf.read_tokenizer(tmp_path)
    assert back['chat'] == spec['chat']
    assert tokenizer.load(back).encode(CORPUS) == tokenizer.load(spec).encode(CORPUS)


CONVERSATIONS = [
    [{'role': 'user', 'content': 'what does the cat see?'}],
    [{'role': 'system', 'content': '你是一位唐代诗人。'}, {'role': 'user', 'content': '床前明月光'}],
    [{'role': 'user', 'content': 'hi 🎉'}, {'role': 'assistant', 'content': 'Hello world!'},
     {'role': 'user', 'content': "It's a test, isn't it?\n\nyes."}],
    [{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'what does the cat see?'},
     {'role': 'assistant', 'content': '<think>\nthe cat, the river\n</think>\n\nthe cat sees the river.'},
     {'role': 'user', 'content': 'and then?'}, {'role': 'assistant', 'content': 'the cat sat on the mat.'}],
    [{'role': 'user', 'content': 'think'}, {'role': 'assistant', 'content': '<think>x 1234</think>def f(x): return x'}],
]


@pytest.mark.parametrize('family', ['qwen3', 'qwen2.5'])
def test_chat_ids_are_the_templates(family, tmp_path):
    """Every conversation, as a prompt (add_generation_prompt) and, ending in a reply, as training
    text: the ids of the folder's chat_template through apply_chat_template (Qwen3: thinking off)."""
    tf = need('transformers')
    need('jinja2')
    qwen_tokenizer(tmp_path, family)
    (tmp_path / 'config.json').write_text(json.dumps({'vocab_size': 448}))
    spec = hf.read_tokenizer(tmp_path)
    assert spec['chat'] == family
    tok = tokenizer.load(spec)
    theirs = tf.AutoTokenizer.from_pretrained(tmp_path)

    def template(messages, gen):
        r = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, enable_thinking=False)
        return list(r['input_ids'] if hasattr(r, 'keys') else r)
    for messages in CONVERSATIONS:
        if messages[-1]['role'] == 'user':
            assert chat.prompt_ids(tok, messages) == template(messages, True), messages
        else:
            ids, mask = chat.encode_chat(tok, messages)
            assert ids == template(messages, False), messages
            assert chat.prompt_ids(tok, messages[:-1]) == template(messages[:-1], True)
            # the loss counts exactly the replies: their text (think blocks stripped but for a reasoning
            # written in the last one) and each closing <|im_end|>
            learned = tok.decode([i for i, m in zip(ids, mask) if m])
            replies = [m['content'] for m in messages if m['role'] == 'assistant']
            if family == 'qwen3':
                replies = [r.split('</think>')[-1].lstrip('\n') for r in replies[:-1]] + \
                    [('<think>\n' + replies[-1].split('</think>')[0].split('<think>')[-1].strip('\n') + '\n</think>\n\n'
                      if '</think>' in replies[-1] else '') + replies[-1].split('</think>')[-1].lstrip('\n')]
            assert learned == ''.join(r + '<|im_end|>' for r in replies)


def test_chat_format_is_kept_by_sft_checkpoints_and_refused_when_unknown():
    bpe = tokenizer.bpe_spec(tokenizer.train_bpe([CORPUS * 3], 400))  # reserves <|im_start|>, <|im_end|>
    plain = tokenizer.load(bpe)
    assert plain.chat == 'chatml'
    qwen25 = tokenizer.load({**bpe, 'chat': 'qwen2.5'})
    msgs = [{'role': 'user', 'content': 'hi'}]
    assert chat.prompt_ids(qwen25, msgs) == plain.encode_special(
        f'<|im_start|>system\n{chat.QWEN25_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n')
    with pytest.raises(ValueError, match='think'):  # qwen3 needs its <think> tokens
        chat.prompt_ids(tokenizer.load({**bpe, 'chat': 'qwen3'}), msgs)
    with pytest.raises(ValueError, match="'vicuna'"):
        chat.prompt_ids(tokenizer.load({**bpe, 'chat': 'vicuna'}), msgs)


def test_lora_with_a_head_dim_of_its_own():
    """q/k/v are (nh + 2 nkv) * head_dim wide, o_proj reads nh * head_dim: the adapters take those widths,
    start as a no-op, and merge back exactly."""
    torch.manual_seed(0)
    cfg = make_config('qwen3', vocab_size=64, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, head_dim=12)
    model = randomize(GPT(cfg)).eval()
    assert model.blocks[0].attn.qkv.weight.shape == (8 * 12, 32) and model.blocks[0].attn.o_proj.weight.shape == (32, 48)
    x = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        before = model(x)[0]
    add_lora(model, 4, 8.0, targets=('qkv', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'))
    assert model.blocks[0].attn.qkv.lora_b.shape == (96, 4) and model.blocks[0].attn.o_proj.lora_a.shape == (4, 48)
    with torch.no_grad():
        assert torch.equal(model(x)[0], before)
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
        adapted = model(x)[0]
    assert not torch.allclose(adapted, before)
    merge_lora(model)
    with torch.no_grad():
        assert torch.allclose(model(x)[0], adapted, atol=1e-5)


# ----------------------------------------------------------------------------- refusals

QWEN3 = dict(architectures=['Qwen3ForCausalLM'], vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6)


@pytest.mark.parametrize('change,field', [
    ({'architectures': ['Qwen3MoeForCausalLM'], 'num_experts': 8}, 'num_experts'),
    ({'architectures': ['Qwen2MoeForCausalLM']}, 'Qwen2MoeForCausalLM'),
    ({'num_local_experts': 4}, 'num_local_experts'),
    ({'use_sliding_window': True, 'sliding_window': 16}, 'use_sliding_window'),
    ({'architectures': ['Qwen2ForCausalLM'], 'use_sliding_window': True}, 'use_sliding_window'),
    ({'layer_types': ['sliding_attention']}, 'layer_types'),
    ({'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 32}}, 'rope_scaling'),
    ({'rope_scaling': {'type': 'linear', 'factor': 2.0}}, 'rope_scaling'),
    ({'rope_scaling': {'rope_type': 'dynamic', 'factor': 2.0}}, 'rope_scaling'),
    ({'head_dim': 7}, 'head_dim'),
    ({'hidden_act': 'gelu'}, 'hidden_act'),
])
def test_refusals_name_the_field(change, field, tmp_path):
    with pytest.raises(ValueError, match=field) as e:
        hf.load_hf(write_folder(tmp_path, {**QWEN3, **change}))
    assert '\n' not in str(e.value)


# ----------------------------------------------------------------------------- size presets

# Each preset as transformers would configure the released model (written out here, not derived
# from our own mapping).
HF_SIZES = {
    'gpt2-124m': ('GPT2Config', dict(n_layer=12, n_head=12, n_embd=768)),
    'gpt2-355m': ('GPT2Config', dict(n_layer=24, n_head=16, n_embd=1024)),
    'gpt2-774m': ('GPT2Config', dict(n_layer=36, n_head=20, n_embd=1280)),
    'gpt2-1.5b': ('GPT2Config', dict(n_layer=48, n_head=25, n_embd=1600)),
    'smollm2-135m': ('LlamaConfig', dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                         rope_theta=100000.0, tie_word_embeddings=True)),
    'tinyllama-1.1b': ('LlamaConfig', dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                           num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                                           tie_word_embeddings=False)),
    'qwen2.5-0.5b': ('Qwen2Config', dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                                         rope_theta=1000000.0, tie_word_embeddings=True)),
    'qwen3-0.6b': ('Qwen3Config', dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                       max_position_embeddings=40960, rope_theta=1000000.0, tie_word_embeddings=True)),
}


def test_every_size_preset_is_checked():
    assert sorted(HF_SIZES) == sorted(SIZES)


@pytest.mark.parametrize('name', sorted(HF_SIZES))
def test_size_presets_count_as_transformers_does(name):
    """Parameter counts on the meta device (shapes only, nothing allocated), ours against transformers'."""
    tf = need('transformers')
    cls, kw = HF_SIZES[name]
    with torch.device('meta'):
        theirs = tf.AutoModelForCausalLM.from_config(getattr(tf, cls)(**kw))
        ours = GPT(size_config(name))
    n = sum(p.numel() for p in theirs.parameters())  # (tied weights are one parameter in both)
    assert ours.num_params(non_embedding=False) == n
    assert all(p.device.type == 'meta' for p in ours.parameters())


def test_size_presets_without_transformers():
    """What the README quotes, on the meta device; and a run's own vocabulary and context replace the released ones."""
    with torch.device('meta'):
        counts = {name: GPT(size_config(name)).num_params(non_embedding=False) for name in SIZES}
    assert counts['gpt2-124m'] == 12 * (12 * 768 ** 2 + 13 * 768) + 50257 * 768 + 1024 * 768 + 2 * 768
    assert sorted(counts, key=counts.get)[:2] == ['gpt2-124m', 'smollm2-135m']
    cfg = size_config('qwen3-0.6b', vocab_size=300, block_size=32)
    assert (cfg.vocab_size, cfg.block_size, cfg.head_dim, cfg.qk_norm, cfg.n_embd) == (300, 32, 128, True, 1024)
    with pytest.raises(ValueError, match='model_size'):
        size_config('gpt5')


# ----------------------------------------------------------------------------- the scripts, end to end

@pytest.fixture(scope='module')
def qwen3_folder(tmp_path_factory):
    tf = need('transformers')
    need('safetensors')
    path = tmp_path_factory.mktemp('qwen3-scripts')
    n_vocab = qwen_tokenizer(path, 'qwen3').get_vocab_size()  # every id the model may sample decodes
    config = CONFIGS['qwen3-tied'](tf)
    config.vocab_size = n_vocab
    randomize(tf.AutoModelForCausalLM.from_config(config)).save_pretrained(path)
    return path


@pytest.mark.slow
def test_sample_and_chat_from_a_qwen3_folder(qwen3_folder):
    s = run('sample.py', f'--init_from=hf:{qwen3_folder}', '--start=the cat', '--num_samples=1', '--max_new_tokens=8',
            '--temperature=0')
    assert s.stdout.startswith('the cat')
    c = run('sample.py', f'--init_from=hf:{qwen3_folder}', '--chat', '--start=hi', '--num_samples=1', '--max_new_tokens=6',
            '--temperature=0')
    assert c.returncode == 0 and 'Traceback' not in c.stderr


@pytest.mark.slow
def test_finetune_sft_with_lora_from_a_qwen3_folder(qwen3_folder, tmp_path):
    """A few LoRA iters: the checkpoint keeps the qwen3 chat format and template, and exports as Qwen3."""
    chats = tmp_path / 'chats.jsonl'
    chats.write_text(''.join(json.dumps(r) + '\n' for r in make_chats(40)))
    out = tmp_path / 'sft'
    run('finetune_sft.py', f'--init_from=hf:{qwen3_folder}', f'--data_file={chats}', f'--cache_dir={tmp_path / "cache"}',
        f'--out_dir={out}', '--lora_rank=4', "--lora_targets=('qkv','o_proj','gate_proj','up_proj','down_proj')",
        '--max_iters=4', '--eval_interval=2', '--eval_iters=1', '--batch_size=4', '--block_size=48', '--warmup_iters=1',
        '--sample_prompt=hi', '--sample_tokens=4', '--device=cpu')
    ck = torch.load(out / 'ckpt.pt', weights_only=True)
    assert ck['tokenizer']['chat'] == 'qwen3' and ck['lora']['rank'] == 4
    run('export.py', f'--out_dir={out}', f'--to={tmp_path / "hf_out"}')
    hc = json.loads((tmp_path / 'hf_out' / 'config.json').read_text())
    assert hc['architectures'] == ['Qwen3ForCausalLM'] and hc['head_dim'] == 16
    assert json.loads((tmp_path / 'hf_out' / 'tokenizer_config.json').read_text())['chat_template'] == QWEN3_TEMPLATE
    tf = need('transformers')  # the adapters were folded in: transformers computes what load_model's merged model does
    ours = load_model(str(out))[0]
    theirs = tf.AutoModelForCausalLM.from_pretrained(tmp_path / 'hf_out', dtype=torch.float32).eval()
    x = torch.randint(0, ours.cfg.vocab_size, (1, 12))
    with torch.no_grad():
        assert (theirs(x).logits - ours(x)[0]).abs().max() < 1e-4


@pytest.mark.slow
def test_finetune_cls_from_a_qwen3_folder(qwen3_folder, tmp_path):
    rows = [{'text': f'{s} sees the river.', 'label': lab} for s, lab in
            [('the cat', 'animal'), ('a dog', 'animal'), ('my friend', 'person'), ('the king', 'person')] * 8]
    data = tmp_path / 'cls.jsonl'
    data.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    out = tmp_path / 'cls'
    run('finetune_cls.py', f'--init_from=hf:{qwen3_folder}', f'--data={data}', f'--out_dir={out}', '--max_iters=4',
        '--eval_interval=2', '--batch_size=4', '--trainable=lora', '--device=cpu')
    p = run('finetune_cls.py', f'--out_dir={out}', '--classify=the cat sees the river.')
    assert p.stdout.strip().split()[0] in ('animal', 'person')


@pytest.mark.slow
@pytest.mark.parametrize('arch', ['qwen3', 'qwen2'])
def test_train_from_scratch_with_the_qwen_archs(arch, char_data, tmp_path):
    from conftest import TINY
    out = tmp_path / arch
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--arch={arch}', '--n_kv_head=1', '--head_dim=24',
            f'--out_dir={out}', '--max_iters=4', '--eval_interval=4', '--sample_prompt=')
    assert f'model: {arch}' in p.stdout + p.stderr
    mc = torch.load(out / 'ckpt.pt', weights_only=True)['model_config']
    assert (mc['qk_norm'], mc['qkv_bias'], mc['head_dim'], mc['tie_embeddings']) == (arch == 'qwen3', arch == 'qwen2', 24, True)
    s = run('sample.py', f'--out_dir={out}', '--start=the cat', '--num_samples=1', '--max_new_tokens=8')
    assert s.stdout.startswith('the cat')


@pytest.mark.slow
def test_train_model_size_is_checked(char_data, tmp_path):
    from conftest import TINY
    p = run('train.py', *TINY, f'--data_dir={char_data}', '--model_size=gpt2-7b', f'--out_dir={tmp_path / "x"}', check=False)
    assert p.returncode != 0 and p.stderr.startswith('error: ') and 'model_size' in p.stderr and 'gpt2-124m' in p.stderr
    assert p.stderr.count('\n') == 1
