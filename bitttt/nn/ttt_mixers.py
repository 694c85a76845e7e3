"""The TTT mixers (ttt_linear, ttt_mlp) of BitTTTForCausalLM, over the TTT layers of bitttt.nn.

TODO(train): wire bitttt.nn.TTTLinear / TTTMLP once they land (branch ttt).
"""

from __future__ import annotations

from torch import nn

from bitttt.errors import ConfigError


def make_ttt_mixer(config) -> nn.Module:
    raise ConfigError(f"mixer {config.mixer} needs the TTT layers (not built yet)",
                      hint="pass --mixer attention")
