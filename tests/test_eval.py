"""eval.py and scoring.py: perplexity / bits per byte equal to transformers on the same windows,
multiple-choice acc / acc_norm equal to lm-evaluation-harness on the same questions (zero- and
few-shot), the record formats of HellaSwag / ARC / MMLU / C-Eval / CMMLU, the lm-eval model class,
eval_tasks= during training, and the refusals. Tiny random models, all offline."""
import json
import math
import os

import pytest
import torch

from conftest import TINY, make_text, run
import scoring
import tokenizer
from checkpoint import load_model
from model import GPT, make_config

# ----------------------------------------------------------------------------- fixtures

WORDS = "the cat sat on the mat and a dog ran to the red house while my friend sang a quiet song by the river"


def need(package):
    return pytest.importorskip(package, reason=f'needs {package} (optional; pip install {package})')


def questions(n=12, seed=0):
    """Questions in our own format: a context and 2-4 choices of different lengths."""
    import random
    rng = random.Random(seed)
    words = WORDS.split()
    out = []
    for i in range(n):
        k = rng.randrange(2, 5)
        choices = [' '.join(rng.choice(words) for _ in range(rng.randrange(1, 5))) for _ in range(k)]
        ctx = ' '.join(rng.choice(words) for _ in range(rng.randrange(3, 12)))
        out.append({'context': ctx.capitalize() + (':' if i % 3 else ' '), 'choices': choices, 'answer': rng.randrange(k)})
    return out


def write_jsonl(path, records):
    path.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in records), encoding='utf-8')
    return path


def hf_folder(path, arch):
    """A tiny random Hugging Face model with a byte-level BPE tokenizer, saved as transformers saves
    it (so AutoTokenizer / lm-eval load it too). arch 'llama' also gets a BOS token in front of
    every text (as Llama 3's tokenizer does); 'gpt2' none (as GPT-2's)."""
    tf, tk = need('transformers'), need('tokenizers')
    need('safetensors')
    t = tk.Tokenizer(tk.models.BPE())
    t.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    t.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=400, special_tokens=['<|endoftext|>', '<|begin_of_text|>'],
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t.train_from_iterator([make_text(200) + WORDS] * 3, trainer)
    bos = None
    if arch == 'llama':
        bos = '<|begin_of_text|>'
        t.post_processor = tk.processors.TemplateProcessing(single=f'{bos} $A', special_tokens=[(bos, t.token_to_id(bos))])
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=t, eos_token='<|endoftext|>', bos_token=bos)
    vocab = t.get_vocab_size()  # every id the model can pick is a token (generation decodes them)
    if arch == 'gpt2':
        cfg = tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    else:
        cfg = tf.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                             tie_word_embeddings=False, bos_token_id=1, eos_token_id=0)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # larger weights than the init: choices then differ clearly in likelihood
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() >= 2 else p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope='module', params=['gpt2', 'llama'])
def hf_model(request, tmp_path_factory):
    return hf_folder(tmp_path_factory.mktemp(request.param), request.param)


def hf_nats(folder, ids, max_length, stride):
    """HF's perplexity guide, written out with transformers: -> (total nats, scored tokens)."""
    tf = need('transformers')
    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([ids])
    seq_len, prev_end, nats, count = ids.size(1), 0, 0.0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end  # may be different from stride on the last loop
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss  # mean over the labels that count, after the shift
        n = int((target_ids[:, 1:] != -100).sum())
        nats, count = nats + loss.item() * n, count + n
        prev_end = end
        if end == seq_len:
            break
    return nats, count

# ----------------------------------------------------------------------------- text


def test_windows_score_every_token_once():
    for n, block, stride in [(100, 16, 8), (100, 16, 16), (17, 16, 5), (16, 16, 3), (1000, 64, 1)]:
        ws = scoring.text_windows(n, block, stride)
        scored = [t for b, e, first in ws for t in range(first, e)]
        if stride < block:
            assert scored == list(range(1, n))  # each token but the first, once, in order
        else:
            assert scored == [t for t in range(1, n) if t % block]  # window starts are context only
        assert all(e - b <= block and b < first for b, e, first in ws)
        assert all(first - b >= min(block - stride, first) for b, e, first in ws)  # context: up to block - stride


@pytest.mark.parametrize('bos', [True, False])
def test_text_matches_transformers(hf_model, bos):
    tf = need('transformers')
    text = make_text(40, seed=3)
    model, spec, _ = load_model('', init_from=f'hf:{hf_model}')
    tok = tokenizer.load(spec)
    theirs = tf.AutoTokenizer.from_pretrained(hf_model)(text)['input_ids']  # Llama: BOS first; GPT-2: nothing
    ours = tok.encode(text)
    prefix = scoring.prefix_id(tok, spec)
    assert theirs[-len(ours):] == ours and theirs[:-len(ours)] in ([], [prefix])
    ids = ([prefix] if bos else []) + ours
    for stride in (13, 32, 64):
        nats, scored = scoring.score_text(model, ids, scoring.text_windows(len(ids), 64, stride), batch_size=3)
        want, count = hf_nats(hf_model, ids, 64, stride)
        assert scored == count and abs(nats - want) / want < 1e-5, (stride, nats, want)
        if stride < 64:
            assert scored == len(ids) - 1


def test_text_numbers_definitions():
    r = scoring.text_numbers(nats=200.0, scored=100, n_bytes=400)
    assert r['loss'] == 2.0 and r['ppl'] == pytest.approx(math.exp(2.0))
    assert r['bpb'] == pytest.approx(200 / math.log(2) / 400)


def test_read_text_jsonl_joins_with_blank_lines(tmp_path):
    write_jsonl(tmp_path / 'a.jsonl', [{'text': 'one'}, {'text': 'two 二'}])
    assert scoring.read_text(str(tmp_path / 'a.jsonl')) == 'one\n\ntwo 二'
    (tmp_path / 'b.txt').write_text('plain\ntext', encoding='utf-8')
    assert scoring.read_text(str(tmp_path / 'b.txt')) == 'plain\ntext'

# ----------------------------------------------------------------------------- question formats


NATIVE = {
    'hellaswag': ({'activity_label': 'Removing ice from car', 'ctx_a': 'Then, the man writes over the snow.',
                   'ctx_b': 'then', 'ctx': 'unused', 'endings': [', the man [title] wipes.', ' he  stops.'], 'label': '1'},
                  {'context': 'Removing ice from car: Then, the man writes over the snow. Then',
                   'choices': [', the man. wipes.', 'he stops.'], 'answer': 1}),
    'arc': ({'question': 'Which is a gas?', 'choices': {'text': ['ice', 'steam', 'rock'], 'label': ['A', 'B', 'C']},
             'answerKey': 'B'},
            {'context': 'Question: Which is a gas?\nAnswer:', 'choices': ['ice', 'steam', 'rock'], 'answer': 1}),
    'mmlu': ({'question': ' 2+2? ', 'subject': 'math', 'choices': ['3', '4', '5', '6'], 'answer': 1},
             {'context': '2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:', 'choices': ['A', 'B', 'C', 'D'], 'answer': 1}),
    'ceval': ({'id': 0, 'question': '1+1=？', 'A': '1', 'B': '2', 'C': '3', 'D': '4', 'answer': 'B'},
              {'context': '1+1=？\nA. 1\nB. 2\nC. 3\nD. 4\n答案：', 'choices': ['A', 'B', 'C', 'D'], 'answer': 1}),
    'cmmlu': ({'Question': '天是什么颜色？', 'A': '红', 'B': '绿', 'C': '蓝', 'D': '黑', 'Answer': 'C'},
              {'context': '天是什么颜色？\nA. 红\nB. 绿\nC. 蓝\nD. 黑\n答案：', 'choices': ['A', 'B', 'C', 'D'], 'answer': 2}),
    'ours': ({'context': 'Sky:', 'choices': ['blue', 'green'], 'answer': 0},
             {'context': 'Sky:', 'choices': ['blue', 'green'], 'answer': 0}),
}


@pytest.mark.parametrize('name', sorted(NATIVE))
def test_native_records_map_as_lm_eval_tasks_do(name):
    rec, want = NATIVE[name]
    assert scoring.to_question(rec) == want


def test_fewshot_prompt_and_draws():
    qs = questions(6)
    ex = scoring.fewshot_examples(qs, None, 2, 'first')
    assert ex[0] == qs[1:3] and ex[1] == [qs[0], qs[2]]  # the question asked is never its own example
    p = scoring.prompt(qs[0], ex[0])
    assert p == f"{qs[1]['context']} {qs[1]['choices'][qs[1]['answer']]}\n\n{qs[2]['context']} " \
                f"{qs[2]['choices'][qs[2]['answer']]}\n\n{qs[0]['context']}"
    r1, r2 = (scoring.fewshot_examples(qs, qs[:5], 3, 'random', seed=7) for _ in range(2))
    assert r1 == r2 and len({tuple(map(id, e)) for e in r1}) > 1  # seeded, and not the same draw for each question
    with pytest.raises(ValueError, match='shots=9'):
        scoring.fewshot_examples(qs, None, 9)


def test_encode_pair_moves_trailing_spaces_and_splits_the_whole():
    tok = tokenizer.load({'kind': 'tiktoken', 'name': 'gpt2'}) if os.environ.get('TIKTOKEN_CACHE_DIR') else None
    if tok is None:
        pytest.skip('needs the GPT-2 BPE in ../shared/data/tiktoken_cache')
    ctx, cont = scoring.encode_pair(tok, None, 'Answer: ', 'yes')
    assert ctx == tok.encode('Answer:') and cont == tok.encode('Answer: yes')[len(ctx):] == tok.encode(' yes')
    assert scoring.encode_pair(tok, None, '', ' yes') == ([tok.eot], tok.encode(' yes'))


def test_acc_and_acc_norm_follow_lm_eval():
    """acc: argmax of the log-likelihoods; acc_norm: argmax of ll / len(choice in characters)."""
    torch.manual_seed(0)
    cfg = make_config(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=30)
    model = GPT(cfg).eval()
    tok = tokenizer.load({'kind': 'char', 'chars': 'abcdefghijklmnopqrstuvwxyz :.'})
    qs = [{'context': 'ab', 'choices': ['c', 'dddddd', 'ef'], 'answer': a} for a in range(3)]
    r = scoring.score_questions(model, tok, None, qs, batch_size=2)
    ll = r['lls'][0]
    assert r['lls'] == [ll] * 3
    best, best_norm = ll.index(max(ll)), [v / len(c) for v, c in zip(ll, qs[0]['choices'])]
    best_norm = best_norm.index(max(best_norm))
    assert r['acc'] == pytest.approx(1 / 3) and r['acc_norm'] == pytest.approx(1 / 3)
    one = scoring.score_questions(model, tok, None, [qs[best]])
    assert one['acc'] == 1.0 and scoring.score_questions(model, tok, None, [qs[best_norm]])['acc_norm'] == 1.0
    # each log-likelihood is the sum of log p of the choice's tokens after the context
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([tok.encode('ab c')[:-1]]))[0], -1)[0]
    assert ll[0] == pytest.approx(lp[-2, tok.encode(' ')[0]].item() + lp[-1, tok.encode('c')[0]].item(), abs=1e-5)


@pytest.mark.parametrize('bad, words', [
    ('{"context": "a", "choices": ["x", "y"], "answer": 2}', 'out of range'),
    ('{"context": "a", "choices": [], "answer": 0}', 'no choices'),
    ('{"context": "a", "choices": ["x"], "answer": 0', 'not valid JSON'),
    ('{"question": "q", "choices": {"text": ["x"], "label": ["A"]}, "answerKey": "E"}', 'answerKey'),
    ('{"question": "q", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "Z"}', 'not a letter'),
    ('{"prompt": "q"}', 'not a question record'),
])
def test_bad_question_lines_name_file_and_line(tmp_path, capsys, bad, words):
    p = tmp_path / 'q.jsonl'
    p.write_text('{"context": "ok", "choices": ["a", "b"], "answer": 0}\n' + bad + '\n', encoding='utf-8')
    with pytest.raises((ValueError, SystemExit)) as e:  # JSON itself is checked by cli.read_jsonl, which dies
        scoring.read_questions(str(p))
    msg = str(e.value) if e.type is ValueError else capsys.readouterr().err
    assert f'{p}:2' in msg and words in msg

# ----------------------------------------------------------------------------- against lm-evaluation-harness

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    train: {train}
test_split: test
fewshot_split: train
fewshot_config:
  sampler: first_n
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def local_task(tmp_path, qs, dev, name='nanolm_local'):
    """A local lm-eval task reading our own question files -> its folder (lm-eval's include_path)."""
    d = tmp_path / 'tasks'
    d.mkdir(exist_ok=True)
    test, train = write_jsonl(tmp_path / f'{name}.jsonl', qs), write_jsonl(tmp_path / f'{name}_dev.jsonl', dev)
    (d / f'{name}.yaml').write_text(TASK_YAML.format(name=name, test=test, train=train))
    return d


def lm_eval_run(model, task_dir, name, shots, **kw):
    """lm-eval's simple_evaluate, offline -> (acc, acc_norm, {doc_id: [loglikelihood per choice]}). Only
    the local task is indexed (include_defaults=False): lm-eval's thousands of its own take ~7 s a time."""
    lm_eval = need('lm_eval')
    from lm_eval.tasks import TaskManager
    os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
    res = lm_eval.simple_evaluate(model=model, tasks=[name], num_fewshot=shots, log_samples=True,
                                  task_manager=TaskManager(include_path=str(task_dir), include_defaults=False), **kw)
    r = res['results'][name]
    lls = {s['doc_id']: [resp[0][0] for resp in s['resps']] for s in res['samples'][name]}
    return r['acc,none'], r['acc_norm,none'], lls


@pytest.mark.slow
@pytest.mark.parametrize('shots', [0, 3])
def test_questions_match_lm_eval_hf(hf_model, tmp_path, shots, monkeypatch):
    """eval.py's numbers for a Hugging Face model equal lm-eval's own HF model on the same questions."""
    monkeypatch.setenv('HF_DATASETS_CACHE', str(tmp_path / 'hf_cache'))
    qs, dev = questions(10, seed=1), questions(5, seed=2)
    task_dir = local_task(tmp_path, qs, dev)
    acc, acc_norm, lls = lm_eval_run('hf', task_dir, 'nanolm_local', shots, batch_size=4, device='cpu',
                                     model_args=f'pretrained={hf_model},dtype=float32')
    model, spec, _ = load_model('', init_from=f'hf:{hf_model}')
    tok = tokenizer.load(spec)
    ex = scoring.fewshot_examples(qs, dev, shots, 'first') if shots else None
    r = scoring.score_questions(model, tok, spec, qs, ex, batch_size=3)
    for i, mine in enumerate(r['lls']):
        assert mine == pytest.approx(lls[i], rel=1e-5, abs=1e-5), i
    assert (r['acc'], r['acc_norm']) == (acc, acc_norm)
    # and through the command, with its table and --json
    out = tmp_path / 'r.json'
    p = run('eval.py', f'--init_from=hf:{hf_model}', f'--tasks={tmp_path / "nanolm_local.jsonl"}', f'--shots={shots}',
            f'--dev={tmp_path / "nanolm_local_dev.jsonl"}' if shots else '--shots=0', '--dtype=float32', '--device=cpu',
            f'--json={out}')
    got = json.loads(out.read_text())['tasks'][str(tmp_path / 'nanolm_local.jsonl')]
    assert (got['acc'], got['acc_norm'], got['n']) == (acc, acc_norm, 10)
    assert 'acc_norm' in p.stdout


def nanolm_checkpoint(hf_model, out_dir):
    """The HF model as a nanolm checkpoint (out_dir/ckpt.pt): what train.py's runs look like to eval.py."""
    _, _, ck = load_model('', init_from=f'hf:{hf_model}')
    os.makedirs(out_dir, exist_ok=True)
    torch.save(ck, os.path.join(out_dir, 'ckpt.pt'))
    return out_dir


@pytest.mark.slow
def test_nanolm_model_class_answers_as_lm_eval_hf(hf_model, tmp_path):
    """harness.NanoLM's three request types give what lm-eval's own HF model gives for the same model."""
    need('lm_eval')
    from types import SimpleNamespace
    from lm_eval.models.huggingface import HFLM
    import harness
    theirs = HFLM(pretrained=str(hf_model), dtype='float32', batch_size=2, device='cpu')
    ours = harness.NanoLM(out_dir=nanolm_checkpoint(hf_model, tmp_path / 'out'), device='cpu', dtype='float32', batch_size=3)
    reqs = [SimpleNamespace(args=(q['context'], ' ' + c)) for q in questions(4) for c in q['choices']]
    reqs.append(SimpleNamespace(args=('', 'the cat')))  # empty context: the prefix token
    for (a, ga), (b, gb) in zip(theirs.loglikelihood(reqs), ours.loglikelihood(reqs)):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5) and ga == gb
    docs = [SimpleNamespace(args=(make_text(30, seed=s),)) for s in (4, 5)]  # each longer than the 64-token window
    for a, b in zip(theirs.loglikelihood_rolling(docs), ours.loglikelihood_rolling(docs)):
        assert a == pytest.approx(b, rel=1e-5)
    gens = [SimpleNamespace(args=(q['context'], {'until': ['.'], 'max_gen_toks': 12, 'do_sample': False})) for q in questions(3)]
    assert theirs.generate_until(gens) == ours.generate_until(gens)


@pytest.mark.slow
@pytest.mark.parametrize('hf_model', ['gpt2'], indirect=True)
def test_lm_eval_command_line_and_eval_py_lm_eval(hf_model, tmp_path):
    """A nanolm checkpoint on a local lm-eval task, through lm-eval's own command line (harness.py run)
    and through eval.py --lm_eval: the accuracy eval.py --tasks gives for the same questions. One
    architecture: this is the wiring (each process indexes lm-eval's own tasks, ~7 s); that the model
    answers lm-eval's requests right for both is test_nanolm_model_class_answers_as_lm_eval_hf."""
    need('lm_eval')
    qs, dev = questions(8, seed=5), questions(4, seed=6)
    task_dir = local_task(tmp_path, qs, dev)
    out = nanolm_checkpoint(hf_model, tmp_path / 'out')
    env = {'HF_DATASETS_OFFLINE': '1', 'HF_DATASETS_CACHE': str(tmp_path / 'hf_cache')}
    mine = tmp_path / 'mine.json'
    run('eval.py', f'--out_dir={out}', f'--tasks={tmp_path / "nanolm_local.jsonl"}', '--dtype=float32', '--device=cpu',
        f'--json={mine}', '--lm_eval=nanolm_local', f'--lm_eval_args=include_path={task_dir}', env=env)
    got = json.loads(mine.read_text())
    want = got['tasks'][str(tmp_path / 'nanolm_local.jsonl')]
    assert got['lm_eval']['nanolm_local']['acc'] == want['acc']
    assert got['lm_eval']['nanolm_local']['acc_norm'] == want['acc_norm']
    res = tmp_path / 'lm_eval_out'
    run('harness.py', 'run', '--model', 'nanolm', '--model_args', f'out_dir={out},dtype=float32', '--tasks', 'nanolm_local',
        '--include_path', task_dir, '--output_path', res, '--device', 'cpu', env=env)
    files = list(res.rglob('results*.json'))
    assert len(files) == 1
    r = json.loads(files[0].read_text())['results']['nanolm_local']
    assert (r['acc,none'], r['acc_norm,none']) == (want['acc'], want['acc_norm'])

# ----------------------------------------------------------------------------- during training


def learnable_questions(n=12, seed=0):
    """Questions a tiny model trained on make_text() can learn: a subject, then the true rest of a
    sentence against the same words in reverse order (all characters of make_text's vocabulary)."""
    import random
    rng = random.Random(seed)
    lines = [l for l in make_text(200, seed=9).splitlines() if l]
    out = []
    for _ in range(n):
        words = rng.choice(lines).split()
        ctx, rest = ' '.join(words[:2]), words[2:]
        right, wrong = ' '.join(rest), ' '.join(rest[::-1])
        k = rng.randrange(2)
        out.append({'context': ctx, 'choices': [right, wrong] if k == 0 else [wrong, right], 'answer': k})
    return out


def test_task_accuracy_in_process():
    torch.manual_seed(0)
    model = GPT(make_config(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=30))
    tok = tokenizer.load({'kind': 'char', 'chars': 'abcdefghijklmnopqrstuvwxyz .\n'})
    tasks = {'mine': learnable_questions(6)}
    model.train()
    accs = scoring.task_accuracy(model, tok, None, tasks, batch_size=4)
    assert model.training  # back in training mode after
    assert set(accs) == {'acc_mine', 'acc_norm_mine'} and all(0 <= v <= 1 for v in accs.values())
    model.eval()
    assert accs['acc_mine'] == scoring.score_questions(model, tok, None, tasks['mine'])['acc']
    assert scoring.task_accuracy(model, tok, None, {}) == {}


def test_eval_tasks_checked_before_training(tmp_path):
    tok = tokenizer.load({'kind': 'char', 'chars': 'abc '})
    p = write_jsonl(tmp_path / 'q.jsonl', [{'context': 'ab', 'choices': ['c', 'zz'], 'answer': 0}])
    with pytest.raises(ValueError, match=r'q.jsonl, question 1: .*\'z\''):
        scoring.read_eval_tasks(f'{p}', tok)
    assert list(scoring.read_eval_tasks(f' {p} ,', None)) == ['q']


@pytest.mark.slow
def test_train_logs_task_accuracy_at_each_eval(char_data, tmp_path):
    q = write_jsonl(tmp_path / 'sentences.jsonl', learnable_questions(16))
    out = tmp_path / 'out'
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=40', '--eval_interval=20',
            f'--eval_tasks={q}', '--sample_prompt=')
    rows = [json.loads(l) for l in open(out / 'log.jsonl') if 'val_loss' in l]
    assert [r['iter'] for r in rows] == [20, 40]
    assert all(0 <= r['acc_sentences'] <= 1 and 0 <= r['acc_norm_sentences'] <= 1 for r in rows)
    assert 'acc_sentences' in p.stdout
    # the model after the run scores the same questions the same way through eval.py
    j = tmp_path / 'r.json'
    run('eval.py', f'--out_dir={out}', f'--tasks={q}', '--device=cpu', '--dtype=float32', f'--json={j}')
    assert json.loads(j.read_text())['tasks'][str(q)]['acc'] == rows[-1]['acc_sentences']
    bad = write_jsonl(tmp_path / 'bad.jsonl', [{'context': 'x', 'choices': ['a'], 'answer': 3}])
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path / "out2"}', f'--eval_tasks={bad}', check=False)
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith('error:') and 'bad.jsonl:1' in p.stderr
    assert not (tmp_path / 'out2').exists()


@pytest.mark.slow
def test_finetune_sft_logs_task_accuracy(sft_base, tmp_path):
    base, chats = sft_base
    q = write_jsonl(tmp_path / 'replies.jsonl', [{'context': 'what does the cat see?', 'choices': [' the cat sees', ' a dog'],
                                                  'answer': 0}] * 3)
    out = tmp_path / 'sft'
    run('finetune_sft.py', '--batch_size=8', '--learning_rate=3e-3', '--warmup_iters=5', '--eval_iters=2', '--log_interval=10',
        '--peak_flops=1e12', '--val_fraction=0.1', f'--base_dir={base}', f'--data_file={chats}', f'--cache_dir={out}-cache',
        f'--out_dir={out}', '--max_iters=10', '--eval_interval=10', f'--eval_tasks={q}')
    rows = [json.loads(l) for l in open(out / 'log.jsonl') if 'val_loss' in l]
    assert rows and all(r['acc_replies'] in (0.0, 1.0) for r in rows)

# ----------------------------------------------------------------------------- the command and its refusals


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """A tiny char-level nanolm checkpoint (random weights) and a text and question file for it."""
    d = tmp_path_factory.mktemp('evalrun')
    chars = sorted(set(make_text(200)))
    torch.manual_seed(0)
    cfg = make_config(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=len(chars) + 1)
    from dataclasses import asdict
    torch.save({'model': GPT(cfg).state_dict(), 'model_config': asdict(cfg), 'tokenizer': {'kind': 'char', 'chars': ''.join(chars)},
                'config': {}}, d / 'ckpt.pt')
    (d / 'text.txt').write_text(make_text(20), encoding='utf-8')
    write_jsonl(d / 'q.jsonl', learnable_questions(8))
    return d


@pytest.mark.slow
def test_eval_py_table_and_json(tiny_run, tmp_path):
    d = tiny_run
    j = tmp_path / 'r.json'
    p = run('eval.py', f'--out_dir={d}', f'--text={d / "text.txt"}', f'--tasks={d / "q.jsonl"}', '--shots=2', '--stride=8',
            '--device=cpu', '--dtype=float32', '--batch_size=3', f'--json={j}')
    r = json.loads(j.read_text())
    t = r['text'][str(d / 'text.txt')]
    text = (d / 'text.txt').read_text()
    assert t['bytes'] == len(text.encode()) and t['tokens'] == len(text) + 1 and t['scored'] == len(text)  # char: a token a byte
    assert t['bpb'] == pytest.approx(t['loss'] / math.log(2)) and t['ppl'] == pytest.approx(math.exp(t['loss']))
    assert r['settings']['shots'] == 2 and r['settings']['window'] == 32 and r['settings']['step'] == 8
    assert r['tasks'][str(d / 'q.jsonl')]['n'] == 8
    assert 'bpb' in p.stdout and 'acc_norm' in p.stdout and str(d / 'ckpt.pt') in r['model']
    # batch size does not change the numbers
    j2 = tmp_path / 'r2.json'
    run('eval.py', f'--out_dir={d}', f'--text={d / "text.txt"}', '--stride=8', '--device=cpu', '--dtype=float32',
        '--batch_size=1', f'--json={j2}')
    assert json.loads(j2.read_text())['text'][str(d / 'text.txt')]['loss'] == pytest.approx(t['loss'], rel=1e-6)


def eval_in_process(monkeypatch, capsys, *args):
    """Run eval.py in this process (as python eval.py ARGS, without the seconds a fresh torch import
    costs) -> (exit code, stderr)."""
    import runpy
    from conftest import ROOT
    monkeypatch.setattr('sys.argv', ['eval.py', *map(str, args)])
    try:
        runpy.run_path(str(ROOT / 'eval.py'), run_name='__main__')
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize('what, args, words', [
    ('malformed line', ['--tasks={bad_json}'], 'bad_json.jsonl:2'),
    ('answer out of range', ['--tasks={bad_answer}'], 'bad_answer.jsonl:1: answer 5 is out of range'),
    ('no choices', ['--tasks={no_choices}'], 'no_choices.jsonl:1: no choices'),
    ('empty question file', ['--tasks={empty}'], 'empty.jsonl is empty'),
    ('empty text', ['--text={empty_txt}'], 'empty_txt.txt is empty'),
    ('short text', ['--text={short}'], 'shorter than one window'),
    ('no such file', ['--text={d}/nope.txt'], 'nope.txt not found'),
    ('nothing asked', [], 'nothing to measure'),
    ('too many shots', ['--tasks={q}', '--shots=50'], 'shots=50'),
    ('not UTF-8', ['--tasks={latin1}'], 'latin1.jsonl is not UTF-8'),
    ('jsonl without text', ['--text={no_text}'], 'no_text.jsonl:1: no \'text\''),
])
def test_eval_py_refusals(tiny_run, tmp_path, monkeypatch, capsys, what, args, words):
    d = tiny_run
    files = {'bad_json': '{"context": "a", "choices": ["b"], "answer": 0}\n{"context": oops}\n',
             'bad_answer': '{"context": "a", "choices": ["b", "c"], "answer": 5}\n',
             'no_choices': '{"context": "a", "choices": [], "answer": 0}\n', 'empty': '\n'}
    paths = {k: tmp_path / f'{k}.jsonl' for k in files}
    for k, v in files.items():
        paths[k].write_text(v)
    (tmp_path / 'empty_txt.txt').write_text('  \n')
    (tmp_path / 'latin1.jsonl').write_bytes('{"context": "café", "choices": ["a"], "answer": 0}\n'.encode('latin-1'))
    (tmp_path / 'no_text.jsonl').write_text('{"body": "x"}\n')
    (tmp_path / 'short.txt').write_text('the cat')
    fmt = {**paths, 'empty_txt': tmp_path / 'empty_txt.txt', 'latin1': tmp_path / 'latin1.jsonl',
           'no_text': tmp_path / 'no_text.jsonl', 'short': tmp_path / 'short.txt', 'd': d, 'q': d / 'q.jsonl'}
    j = tmp_path / 'out.json'
    code, err = eval_in_process(monkeypatch, capsys, f'--out_dir={d}', '--device=cpu', f'--json={j}',
                                *[a.format(**fmt) for a in args])
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith('error:') and words in lines[0], err
    assert not j.exists()


@pytest.mark.slow
def test_eval_py_refusal_as_a_process(tiny_run, tmp_path):
    """The same, as a user meets it: one line on stderr, exit 1, no --json file."""
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"context": "a", "choices": ["b", "c"], "answer": 2}\n')
    p = run('eval.py', f'--out_dir={tiny_run}', f'--tasks={bad}', f'--json={tmp_path / "r.json"}', check=False)
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [f"error: {bad}:1: answer 2 is out of range for 2 choices (0 to 1)"]
    assert not (tmp_path / 'r.json').exists()


def test_lm_eval_missing_is_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    import sys
    for name in [m for m in sys.modules if m.split('.')[0] == 'lm_eval'] + ['lm_eval']:
        monkeypatch.setitem(sys.modules, name, None)  # as on a machine without it: importing it (or a part) fails
    monkeypatch.delitem(sys.modules, 'harness', raising=False)
    code, err = eval_in_process(monkeypatch, capsys, f'--out_dir={tiny_run}', '--device=cpu', '--lm_eval=hellaswag')
    assert code == 1 and err.strip() == 'error: --lm_eval needs lm-evaluation-harness: pip install lm-eval ' \
                                        '(or use --tasks=FILE.jsonl, which does not)'


def test_plot_log_draws_task_accuracy(tmp_path, monkeypatch):
    need('matplotlib')
    import training
    rows = [{'iter': i, 'loss': 3 - i / 10} for i in range(1, 11)]
    rows += [{'iter': i, 'train_loss': 3 - i / 10, 'val_loss': 3.1 - i / 10, 'acc_sentences': i / 10, 'acc_norm_sentences': i / 12}
             for i in (5, 10)]
    write_jsonl(tmp_path / 'log.jsonl', rows)
    labels = []
    import matplotlib.axes
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, 'plot', lambda self, *a, **kw: labels.append(kw.get('label')) or real(self, *a, **kw))
    assert 'loss.png' in training.plot_log(str(tmp_path))
    assert (tmp_path / 'loss.png').stat().st_size > 0 and 'sentences acc' in labels
