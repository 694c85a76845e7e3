"""Fuzzing Hugging Face folders (bitttt/hf): config.json fields, tokenizer files, chat templates
and safetensors index files, mutated from good ones with a fixed seed.

A case passes when the loader either accepts it or raises one ConfigError whose message is one
line naming the file; any other exception (TypeError, PanicException, a NaN model later) fails
it. No transformers and no weights: each target is the loader function that reads that file.
`-s` prints the cases per target and how they ended.
"""

from __future__ import annotations

import json
import os
import random

import pytest

from bitttt.errors import ConfigError
from bitttt.hf import loader
from bitttt.hf.tokenizer import TemplateRenderer, load_hf_tokenizer

SEED = int(os.environ.get("BITTTT_FUZZ_SEED", "1212"))
SCALE = float(os.environ.get("BITTTT_FUZZ_SCALE", "1"))

GOOD_CONFIG = {"model_type": "bitnet", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
               "hidden_act": "relu2", "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 256,
               "tie_word_embeddings": False, "attention_bias": False, "bos_token_id": 256, "eos_token_id": 258,
               "torch_dtype": "bfloat16", "rope_scaling": None,
               "quantization_config": {"quant_method": "bitnet", "linear_class": "bitlinear",
                                       "quantization_mode": "offline"}}
ODD_VALUES = [None, True, False, 0, -1, 1, 2**31, 2**63, 2**70, -2**70, 0.5, -0.0, 1e-300, 1e308, -1e308, 3.0,
              "", "x", "yes", "1e-5", "bitnet", [], [1], [1, "a"], {}, {"a": 1}, "\x00", "\u202e" * 3,
              [None] * 10, {"rope_type": "yarn"}, {"rope_type": "default", "rope_theta": "x"}]


def _count(tally: dict, target: str, outcome: str) -> None:
    tally.setdefault(target, {}).setdefault(outcome, 0)
    tally[target][outcome] += 1


@pytest.fixture(scope="module")
def tally():
    t: dict = {}
    yield t
    for target, outcomes in t.items():
        print(f"\nfuzz hf {target}: {sum(outcomes.values())} cases {outcomes}")


def _expect_clean(fn, tally, target: str, case) -> None:
    try:
        fn()
    except ConfigError as e:
        assert "\n" not in str(e) and e.hint, (target, case, str(e))
        _count(tally, target, "refused")
    except BaseException as e:  # noqa: B036 - PanicException is a BaseException; any of them fails the case
        pytest.fail(f"{target}: {type(e).__name__}: {e} for {json.dumps(case, default=str)[:300]}")
    else:
        _count(tally, target, "ok")


def test_fuzz_config_fields(tmp_path, tally):
    rng = random.Random(SEED)
    keys = list(GOOD_CONFIG) + ["rope_parameters", "head_dim", "dtype"]
    for i in range(int(400 * SCALE)):
        d = json.loads(json.dumps(GOOD_CONFIG))
        for _ in range(rng.randrange(1, 4)):
            key = rng.choice(keys)
            if rng.random() < 0.1:
                d.pop(key, None)
            else:
                d[key] = rng.choice(ODD_VALUES)
        folder = tmp_path / f"c{i}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(d))

        def read(folder=folder, d=d):
            c = loader.read_config(str(folder))
            # what loads is in range: nothing reaches the model as a wrong type
            assert isinstance(c.tie_word_embeddings, bool) and c.rms_norm_eps > 0 and c.rope_theta > 0
            assert c.num_attention_heads * c.head_dim == c.hidden_size and isinstance(c.quantization, dict)
        _expect_clean(read, tally, "config.json", d)


def _good_tokenizer(folder) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["hello world", "the quick brown fox"], trainer=trainers.BpeTrainer(
        vocab_size=280, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer.json")) as f:
        return json.load(f)


TOKENIZER_PARTS = {
    "normalizer": [None, {"type": "Precompiled", "precompiled_charsmap": "AAAA"},
                   {"type": "Precompiled", "precompiled_charsmap": "AQAAAAAAAAA="}, {"type": "NFKC"},
                   {"type": "Replace", "pattern": {"Regex": "("}, "content": "x"}, {"type": "Lowercase"}, "x", 5],
    "pre_tokenizer": [None, {"type": "Whitespace"}, {"type": "Split", "pattern": {"Regex": "["}, "behavior": "Isolated",
                                                     "invert": False}, {"type": "Nope"}],
    "model": [{"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "[UNK]"}, {"type": "WordLevel", "vocab": {}},
              {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "b"]]}, {"type": "Unigram", "vocab": [["a", 1.0]]},
              {"type": "Unigram", "vocab": []}, None, "bpe"],
    "added_tokens": [[], None, [{"id": 10**9, "content": "x", "special": True}], "x"],
    "decoder": [None, {"type": "ByteLevel"}, {"type": "Nope"}, 3],
}


def test_fuzz_tokenizer_files(tmp_path, tally):
    from bitttt.hf.bitnet import BitNetConfig

    rng = random.Random(SEED + 1)
    base = tmp_path / "base"
    base.mkdir()
    good = _good_tokenizer(str(base))
    config = BitNetConfig(vocab_size=300, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                          bos_token_id=280, eos_token_id=282)
    for i in range(int(80 * SCALE)):
        d = json.loads(json.dumps(good))
        part = rng.choice(list(TOKENIZER_PARTS))
        d[part] = rng.choice(TOKENIZER_PARTS[part])
        folder = tmp_path / f"t{i}"
        folder.mkdir()
        (folder / "tokenizer.json").write_text(json.dumps(d))
        tok_config = rng.choice([{}, {"eos_token": "<|eot_id|>"}, {"eos_token": {"content": 5}}, {"bos_token": []},
                                 {"chat_template": 7}, {"chat_template": [{"name": "default"}]}])
        (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
        if rng.random() < 0.3:
            (folder / "chat_template.jinja").write_bytes(rng.choice([b"\xff\xfe", b"{{ messages }}", b""]))
        if rng.random() < 0.2:
            (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": rng.choice(ODD_VALUES)}))

        def use(folder=folder):
            tok = load_hf_tokenizer(str(folder), config)
            tok.encode("hello zebra ü 123")
        _expect_clean(use, tally, "tokenizer files", {"part": part, "value": d[part], "tokenizer_config": tok_config})


TEMPLATES = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10000000000 }}", "{{ [0] * 10**9 }}", "{{ 9 ** 9 ** 9 }}", "{{ 'a'.ljust(3000000000) }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "{{ messages.__class__.__mro__ }}",
    "{{ ''.__class__.__subclasses__() }}", "{% for m in messages %}{{ m.content * 100000 }}{% endfor %}",
    "{{ raise_exception('bad role') }}", "{% if %}", "{{ messages[99] }}", "{{ cycler.__init__.__globals__ }}",
    "{% set x = namespace(a=1) %}{% for i in range(10**5) %}{% set x.a = x.a ~ 'ab' %}{% endfor %}{{ x.a | length }}",
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% endfor %}",
]


def test_fuzz_chat_templates(tally):
    """Every hostile template is refused within its budget, and the renderer still renders after."""
    import time

    renderer = TemplateRenderer(deadline_s=2.0)
    context = {"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": True,
               "bos_token": "<s>", "eos_token": "</s>"}
    try:
        for template in TEMPLATES:
            t0 = time.monotonic()
            _expect_clean(lambda t=template: renderer.render(t, context), tally, "chat templates", template)
            assert time.monotonic() - t0 < 30, template
        assert renderer.render(TEMPLATES[-1], context) == "<s>user: hi"
    finally:
        renderer.close()


def test_fuzz_index_files(tmp_path, tally):
    from safetensors.torch import save_file
    import torch

    rng = random.Random(SEED + 2)
    for i in range(int(60 * SCALE)):
        folder = tmp_path / f"i{i}"
        folder.mkdir()
        save_file({"a": torch.zeros(2)}, str(folder / "model-00001-of-00001.safetensors"))
        index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00001.safetensors"}}
        kind = rng.choice(["weight_map", "file", "whole", "bytes"])
        if kind == "weight_map":
            index["weight_map"] = rng.choice(ODD_VALUES + [{"a": 5}, {"a": None}, {"a": "../../etc/passwd"},
                                                           {"a": "/dev/zero"}, {"a": "missing.safetensors"}])
        elif kind == "file":
            index["weight_map"] = {"a": rng.choice(["", ".", "config.json", "x" * 5000, "nul\x00"])}
        (folder / loader.INDEX_FILE).write_text(json.dumps(rng.choice(ODD_VALUES)) if kind == "whole"
                                                else json.dumps(index))
        if kind == "bytes":
            (folder / loader.INDEX_FILE).write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(200))))
        _expect_clean(lambda f=folder: loader.Tensors(str(f)), tally, "index files", index)
