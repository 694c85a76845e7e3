"""Fixtures shared by bitttt's tests."""

from __future__ import annotations

import os

import pytest
import torch  # noqa: F401  bitttt._C links libtorch_cpu: load it first, wherever torch lives

from bitttt import _C

# Every kernel set this CPU runs (scalar, avx2, avx512, avx512_emulated, ...): tests that
# take the `isa` fixture run once per entry, so a kernel set added later is tested as-is.
AVAILABLE_ISAS = _C.available_isas()
# BITTTT_TEST_ISAS=avx2,scalar narrows that list. The CI stages that only check the stable ABI
# (one wheel beside another torch) set it: the kernels are the same binary code there, and the
# in-tree run and the Clang build test every set.
if os.environ.get("BITTTT_TEST_ISAS"):
    AVAILABLE_ISAS = [i for i in os.environ["BITTTT_TEST_ISAS"].split(",") if i in AVAILABLE_ISAS] or AVAILABLE_ISAS


# "amx": the AVX-512 set with AMX tiles for calls of 8+ tokens (the ternary matmul; 2..16: the int8
# head). It reports itself as "avx512" (the other op families key on that name), so it is not in
# available_isas(); where the build, CPU and OS have it, the matmul tests take `isa_amx` below.
AMX_ISAS = ["amx"] if _C.build_info()["amx"] and _C.cpu_features()["amx_int8"] else []
if os.environ.get("BITTTT_TEST_ISAS"):
    AMX_ISAS = [i for i in AMX_ISAS if i in os.environ["BITTTT_TEST_ISAS"].split(",")]


@pytest.fixture(params=AVAILABLE_ISAS)
def isa(request) -> str:
    """Forces one ternary kernel set for the test, then goes back to 'auto'."""
    _C.set_isa(request.param)
    assert _C.isa() == request.param
    yield request.param
    _C.set_isa("auto")


@pytest.fixture(params=AVAILABLE_ISAS + AMX_ISAS)
def isa_amx(request) -> str:
    """As `isa`, plus "amx" where this machine has it (the matmul tests)."""
    _C.set_isa(request.param)
    assert _C.amx_active() == (request.param == "amx")
    assert _C.isa() == ("avx512" if request.param == "amx" else request.param)
    yield request.param
    _C.set_isa("auto")


def write_tiny_model(path, seed: int = 0, mixer: str = "ttt_linear", endless: bool = False) -> str:
    """A random-init 2-layer BitTTT model with the byte tokenizer, written as a checkpoint
    folder at `path` (what `bitttt chat --model` loads); nothing trained, milliseconds per token.
    endless: the end-of-text row of the head is zero, so that logit is always exactly 0
    while some other of the ~260 random logits is above 0: greedy replies never end on their own."""
    from bitttt.checkpoint import write_folder
    from bitttt.model import BitTTTConfig, BitTTTForCausalLM
    from bitttt.tokenizer import ByteTokenizer

    torch.manual_seed(seed)
    model = BitTTTForCausalLM(BitTTTConfig(n_layer=2, n_embd=64, n_head=2, mixer=mixer, mini_batch=8))
    tokenizer = ByteTokenizer()
    if endless:
        with torch.no_grad():
            model.lm_head.weight[tokenizer.eos_id] = 0.0
    return write_folder(str(path), model, tokenizer, {})


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny random model folder (see write_tiny_model), shared read-only by the chat tests."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def endless_model(tmp_path_factory) -> str:
    """write_tiny_model(endless=True): for tests that must stop a reply while it streams."""
    return write_tiny_model(tmp_path_factory.mktemp("endless") / "model", endless=True)


@pytest.fixture(scope="session")
def make_tiny_model():
    """write_tiny_model as a fixture, for tests that need a second, different model."""
    return write_tiny_model
