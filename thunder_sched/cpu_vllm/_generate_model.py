"""Generate a random-weight Llama model directory, with no downloads.

This file is a script run by the *vLLM venv's* Python (it needs torch, transformers and tokenizers,
which the project venv does not have): ``python _generate_model.py --spec JSON --out DIR``.
``model.py`` launches it; nothing in the project imports it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
START = "<|start|>"
END = "<|end|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, START, END]

# Renders any role as `<|start|>role\n...<|end|>\n`; OpenAI content parts and assistant tool calls are
# rendered as text so that an agent's context grows as it would with a real model.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- elif message['content'] is not none %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{%- if message.get('tool_calls') %}"
    "{%- for call in message['tool_calls'] %}"
    "{{- '\\n<tool_call>' + call['function']['name'] + ' ' }}"
    "{%- if call['function']['arguments'] is string %}{{- call['function']['arguments'] }}"
    "{%- else %}{{- call['function']['arguments'] | tojson }}{%- endif %}"
    "{{- '</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start|>assistant\\n' }}{%- endif %}"
)

COMMON_WORDS = """
the be to of and a in that have I it for not on with he as you do at this but his by from they we say
her she or an will my one all would there their what so up out if about who get which go me when make
can like time no just him know take people into year your good some could them see other than then now
look only come its over think also back after use two how our work first well way even new want because
any these give day most us is are was were been has had did does said made found going used number
part world life hand high place small large every great little own old right big long same tell ask
turn move live point home need house read change off play spell air away animal letter mother answer
study still learn should write world father head under story saw left few while along might close
something seem next hard open example begin always those both paper together got group often run
important until children side feet car mile night walk white sea began grow took river four carry state
once book hear stop without second later miss idea enough eat face watch far real almost let above girl
sometimes mountain cut young talk soon list song being leave family body music color stand sun question
fish area mark dog horse birds problem complete room knew since ever piece told usually friends easy
heard order red door sure become top ship across today during short better best however low hours black
products happened whole measure remember early waves reached listen wind rock space covered fast several
hold himself toward five step morning passed vowel true hundred against pattern numeral table north slowly
money map farm pulled draw voice seen cold cried plan notice south sing war ground fall king town unit
figure certain field travel wood fire upon done english road half ten fly gave box finally wait correct
oh quickly person became shown minutes strong verb stars front feel fact inches street decided contain
course surface produce building ocean class note nothing rest carefully scientists inside wheels stay
green known island week less machine base ago stood plane system behind ran round boat game force brought
understand warm common bring explain dry though language shape deep thousands yes clear equation yet
government filled heat full hot check object am rule among noun power cannot able six size dark ball
material special heavy fine pair circle include built can't won't don't it's I'm you're we're they're
quick brown fox jumps lazy
about above accept account across act action activity actually add address admit adult affect afraid
age agency agree ahead allow already alone amount analysis another anyone anything appear apply approach
argue arm around arrive art article artist attack attention author avoid baby bad bag bank bar beat
beautiful bed behavior believe benefit beyond bill billion bit blood blue board born break brother
budget business buy camera campaign cancer candidate capital card care career case catch cause cell
center central century chair challenge chance character charge choice choose church citizen city civil
claim clearly coach collection college commercial community company compare computer concern condition
conference congress consider consumer continue control cost country couple court cover create crime
cultural culture cup current customer daughter dead deal death debate decade decision defense degree
democrat describe design despite detail determine develop development die difference different difficult
dinner direction director discover discuss discussion disease doctor drive drop drug economic economy
edge education effect effort eight either election else employee end energy enjoy enter entire
environment especially establish evening evidence exactly executive exist expect experience expert
eye factor fail fear federal fight final financial find finger firm floor focus follow food foot
foreign forget form former forward free friend future garden general generation glass goal green
growth guess gun guy hair hang happen happy health heart help herself history hit hope hospital
hotel huge human husband identify image imagine impact improve income increase indeed indicate
individual industry information instead institution interest interesting international interview
investment involve item itself job join keep kid kill kind kitchen knowledge land last late
law lawyer lay lead leader least legal less level lie light likely line lose loss lot love machine
magazine maintain major majority manage management manager market marriage matter mean media medical
meet meeting member memory mention method middle military million mind minute mission modern moment
month mouth movement movie mrs much must myself national natural nature near nearly necessary network
never news newspaper nice none nor note occur offer office officer official oil operation opportunity
option organization others owner page pain painting parent particular partner party pass past patient
pay peace per perform performance period personal phone physical pick picture policy political
politics poor popular population position positive possible pressure pretty prevent price private
probably process production professional professor property protect prove provide public purpose
push quality quite race radio raise range rate rather reach ready reality realize really reason
receive recent recently recognize record reduce reflect region relate relationship religious remain
report represent require research resource respond responsibility rich rise risk role rule safe
save scene school science score season seat section security seek sell send senior sense series
serious serve service set seven sex share shoot shot shoulder show sign significant similar simple
simply single sister sit site situation skill skin social society soldier somebody someone son sort
source speak specific speech spend sport staff stage standard statement station stock store strategy
structure student stuff style subject success successful suddenly suffer suggest summer support
table talk teach teacher team technology television term thank theory thing third thought threat
throughout thus total tough toward trade traditional training treat treatment tree trial trip trouble
truth try type various victim view violence visit vote wall wear weapon weight western whatever
whether wide wife win window wish woman wonder worker worry wrong yard yeah yourself
please thank thanks hello sorry okay yes no maybe perhaps because therefore however although
""".split()

TECH_WORDS = """
agent tool call result error file path line code function class method return value string integer
float list dict map key args kwargs self none true false null import from def async await yield lambda
print debug info warning test tests assert pytest python bash shell command output input stdout stderr
exit status process thread memory cache token tokens prompt model request response server client api
http https json yaml config docker container image sandbox program step task plan patch diff commit
branch repo repository issue bug fix build install package module version update delete create read
write open close start stop run exec execute search query index data table row column schema user
assistant system message content role name type id count size length time timeout retry loop queue
schedule scheduler worker pool event events score context reasoning acting pause paused restore
restored release terminate terminated active waiting running done failed success failure exception
raise try except finally with as if else elif for while break continue pass global nonlocal
src lib bin tmp var etc usr home root work main index utils helpers core tests docs
""".split()

CODE_SNIPPETS = [
    "def {a}_{b}(self, {c}: int) -> {d}:\n    return self.{e}({c} + {n})\n",
    "for {a} in range({n}):\n    {b}.append({a} * {m})\n",
    'if {a} is None:\n    raise ValueError("{b} {c} {d}")\n',
    '{{"{a}": {n}, "{b}": "{c}", "{d}": [{m}, {n}]}}',
    "$ ls -la /{a}/{b}/{c}.py\n-rw-r--r-- 1 root root {n} {d} {m} {e}.txt\n",
    'Traceback (most recent call last):\n  File "/{a}/{b}.py", line {n}, in {c}\n{d}Error: {e}\n',
    'class {A}{B}:\n    {c}: str = "{d}"\n    {e}: int = {n}\n',
    "{a} = {b}.{c}({d}={n}, {e}={m})\n",
    '<tool_call>{a} {{"{b}": "{c}", "{d}": {n}}}</tool_call>',
    "diff --git a/{a}/{b}.py b/{a}/{b}.py\n@@ -{n},{m} +{n},{m} @@\n-    {c} = {d}\n+    {c} = {e}\n",
]


def _pseudo_words(rng: random.Random, count: int) -> list[str]:
    """Seeded made-up words: they give the BPE trainer sub-word material beyond the word lists."""
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr"]
    onsets += ["pl", "gr", "br", "ch", "sh", "th", "cr", "fl", "sp", "qu"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io", "y"]
    codas = ["", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck", "ld", "rt", "x", "ss"]
    words = []
    for _ in range(count):
        syllables = rng.choice((1, 2, 2, 3, 3, 4))
        words.append("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(syllables)))
    return words


def _number(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return str(rng.randint(0, 100))
    if kind < 0.7:
        return str(rng.randint(0, 100_000))
    if kind < 0.85:
        return f"{rng.uniform(0, 1000):.{rng.randint(1, 4)}f}"
    return f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def corpus(seed: int, lines: int) -> Iterator[str]:
    """Deterministic training text: Zipf-weighted English and technical words, numbers, code-like lines."""
    rng = random.Random(seed)
    english = COMMON_WORDS
    tech = TECH_WORDS
    pseudo = _pseudo_words(rng, 3000)
    english_weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(english))]
    for _ in range(lines):
        roll = rng.random()
        if roll < 0.55:
            words = []
            for _ in range(rng.randint(5, 25)):
                pick = rng.random()
                if pick < 0.75:
                    word = rng.choices(english, english_weights)[0]
                elif pick < 0.88:
                    word = rng.choice(tech)
                elif pick < 0.95:
                    word = rng.choice(pseudo)
                else:
                    word = _number(rng)
                if rng.random() < 0.1:
                    word = word.capitalize()
                elif rng.random() < 0.02:
                    word = word.upper()
                words.append(word)
            end = rng.choice([".", ".", ".", "?", "!", ":", ","])
            yield " ".join(words) + end
        elif roll < 0.85:
            template = rng.choice(CODE_SNIPPETS)

            def word() -> str:
                return rng.choice(tech) if rng.random() < 0.6 else rng.choice(pseudo)

            yield template.format(
                a=word(),
                b=word(),
                c=word(),
                d=word(),
                e=word(),
                A=word().capitalize(),
                B=word().capitalize(),
                n=_number(rng),
                m=rng.randint(0, 999),
            )
        else:
            # Printable ASCII noise so every symbol and short digit group appears often.
            yield "".join(chr(rng.randint(32, 126)) for _ in range(rng.randint(10, 60)))


def build_tokenizer(spec: dict, out: Path):  # returns a transformers PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Byte-level: every byte string is representable, so any prompt tokenizes without an unknown token.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec["vocab_size"],
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(
        corpus(spec["seed"], spec["corpus_lines"]), trainer=trainer, length=spec["corpus_lines"]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=END,
        pad_token=PAD,
        additional_special_tokens=[EOS, START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=spec["max_position_embeddings"],
    )
    wrapped.save_pretrained(out)
    return wrapped


def build_model(spec: dict, tokenizer, out: Path) -> int:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    end_ids = [tokenizer.convert_tokens_to_ids(END), tokenizer.convert_tokens_to_ids(EOS)]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_kv_heads"],
        head_dim=spec["head_dim"],
        max_position_embeddings=spec["max_position_embeddings"],
        initializer_range=spec["initializer_range"],
        rope_parameters={"rope_type": "default", "rope_theta": spec["rope_theta"]},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_ids,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec["seed"])
    model = LlamaForCausalLM(config).to(getattr(torch, spec["dtype"]))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=end_ids, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True, help="ModelSpec as JSON")
    parser.add_argument("--out", required=True, type=Path, help="empty or missing output directory")
    args = parser.parse_args()
    spec = json.loads(args.spec)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        print(f"output directory {out} is not empty", file=sys.stderr)
        return 2
    print(f"training a {spec['vocab_size']}-token BPE tokenizer", file=sys.stderr, flush=True)
    tokenizer = build_tokenizer(spec, out)
    print(f"tokenizer has {len(tokenizer)} tokens; building the model", file=sys.stderr, flush=True)
    params = build_model(spec, tokenizer, out)
    (out / "thunder-spec.json").write_text(json.dumps({**spec, "parameters": params}, indent=2) + "\n")
    print(f"model with {params:,} parameters written to {out}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
