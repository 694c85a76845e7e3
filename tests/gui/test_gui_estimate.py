import dataclasses

import pytest

from bitttt_gui.command import TrainSettings
from bitttt_gui.estimate import count_params, estimate, verdict

PRESETS = ("tiny", "small", "base")


def _real_count(vocab_size, **model):
    from bitttt.config import BitTTTConfig
    from bitttt.model import BitTTTForCausalLM

    net = BitTTTForCausalLM(BitTTTConfig(vocab_size=vocab_size, **model))
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("mixer", ["ttt_linear", "ttt_mlp", "attention"])
def test_parameter_count_equals_the_trainers_model(mixer):
    # The byte tokenizer's 256 symbols + 5 specials are padded to 320 by the trainer: the estimate
    # shows the number `bitttt train` prints at start, not one for a 256-symbol vocabulary.
    s = TrainSettings(mixer=mixer, n_layer=2, n_embd=128, n_head=4)
    assert estimate(s).n_params == _real_count(320, mixer=mixer, n_layer=2, n_embd=128, n_head=4)


def test_tiny_preset_count_is_the_trainers_and_bpe_vocab_is_padded():
    assert estimate(TrainSettings()).n_params == _real_count(320)          # tiny: 4 x 256, ttt_linear
    bpe = TrainSettings(tokenizer="bpe", vocab_size=1000, n_layer=1, n_embd=64, n_head=1)
    assert estimate(bpe).n_params == _real_count(1024, n_layer=1, n_embd=64, n_head=1)


def test_param_count_by_hand_for_attention():
    # 1 layer, d=64, 4 heads, vocab 256: emb+head 2*256*64, q/k/v/o 4*64*64, SwiGLU 3*64*256,
    # two block norms 2*64, final norm 64.
    n, tern = count_params(1, 64, 4, 256, "attention")
    assert tern == 4 * 64 * 64 + 3 * 64 * 256
    assert n == 2 * 256 * 64 + tern + 2 * 64 + 64


def test_ttt_adds_convs_inner_weights_and_lr_projection():
    # TTT: qk shared + v + o + gate = as many ternary projections as attention's q k v o; it adds
    # two causal depthwise convs (kernel 4, with bias), the lr projection, token scales, the inner
    # LayerNorm, the post LayerNorm and W0/b0.
    n_att, _ = count_params(1, 64, 4, 256, "attention")
    n_ttt, tern = count_params(1, 64, 4, 256, "ttt_linear", mini_batch=16)
    hd = 16
    extra = 2 * (4 * 64 + 64) + (64 * 4 + 4) + 16 + 2 * 4 * hd + 2 * 64 + (4 * hd * hd + 4 * hd)
    assert n_ttt - n_att == extra
    assert tern == 4 * 64 * 64 + 3 * 64 * 256
    assert count_params(1, 64, 4, 256, "ttt_mlp")[0] > n_ttt


def test_preset_sizes_are_in_their_advertised_ranges():
    sizes = {p: estimate(TrainSettings.for_preset(p)).n_params for p in PRESETS}
    assert 2e6 < sizes["tiny"] < 6e6
    assert 20e6 < sizes["small"] < 40e6
    assert 80e6 < sizes["base"] < 130e6   # ≈ 125M with a 32k vocabulary; byte vocab is smaller


def test_memory_parts_and_scaling():
    s = TrainSettings()
    e = estimate(s)
    assert e.grads == e.weights == 4 * e.n_params and e.optimizer == 2 * e.weights
    assert e.total == e.weights + e.grads + e.optimizer + e.activations + e.overhead
    e2 = estimate(dataclasses.replace(s, batch_size=2 * s.batch_size))
    assert e2.activations == pytest.approx(2 * e.activations, rel=0.01)
    assert e2.weights == e.weights
    assert estimate(s, "cuda").overhead != e.overhead


def test_ternary_export_is_much_smaller():
    s = TrainSettings.for_preset("small")
    tern, full = estimate(s), estimate(dataclasses.replace(s, ternary=False))
    assert tern.export_bytes < full.export_bytes / 4
    assert tern.weights == full.weights   # training keeps float master weights either way


def test_verdict():
    assert verdict(10, 100)[0] == "fits"
    assert verdict(90, 100)[0] == "tight"
    assert verdict(200, 100)[0] == "too_big" and "batch size" in verdict(200, 100)[1]
    assert verdict(10, None)[0] == "unknown"
