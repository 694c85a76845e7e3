"""The launcher's preset table (it cannot import bitttt) must equal the trainer's presets:
the launcher sends only the flags that differ from the preset it shows."""

import pytest

from bitttt import config
from bitttt_gui import presets


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_launcher_presets_equal_the_trainers(name):
    trainer = config.defaults(name)
    launcher = dict(presets.PRESETS[name])
    assert launcher.pop("vocab_size") == 256  # the byte tokenizer's; BPE's size is --vocab-size
    assert {k: trainer[k] for k in launcher} == launcher


def test_launcher_ffn_size_equals_the_models():
    for n_embd in (64, 128, 256, 384, 512, 768):
        assert presets.ffn_size(n_embd) == config.BitTTTConfig(n_embd=n_embd, n_head=1).hidden_size


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_launcher_estimate_is_within_10_percent_of_the_real_model(name):
    from bitttt_gui.command import TrainSettings
    from bitttt_gui.estimate import estimate

    from bitttt.model import BitTTTForCausalLM

    d = config.defaults(name)
    model = BitTTTForCausalLM(config.BitTTTConfig(**{k: d[k] for k in ("n_layer", "n_embd", "n_head", "mixer",
                                                                          "ternary", "mini_batch")}))
    real = sum(p.numel() for p in model.parameters())
    assert abs(estimate(TrainSettings.for_preset(name)).n_params - real) < 0.1 * real
