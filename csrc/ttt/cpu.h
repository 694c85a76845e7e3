// CPU entry points of the TTT-Linear ops that other C++ calls without the dispatcher: the
// one-token decode step, which generation calls per token and layer (the dispatcher's
// boxing, name lookups and Python argument parsing cost as much as its 12 heads of work).
// module.cpp binds it as bitttt._C._ttt_linear_decode (bitttt.ops.ttt_linear_decode_'s lean
// path); torch.ops.bitttt.ttt_linear_decode_ registers the same function.
#pragma once

#include <torch/csrc/stable/tensor.h>

#include <cstdint>

namespace bitttt::ttt {

// One token for every head, updating (W, c, gW, gc) in place; returns out [B,H,D]. Checks
// every argument (checks.h) as the registered op does.
torch::stable::Tensor ttt_linear_decode_cpu(torch::stable::Tensor q, torch::stable::Tensor k,
                                            torch::stable::Tensor v, torch::stable::Tensor lr,
                                            torch::stable::Tensor ts, torch::stable::Tensor W,
                                            torch::stable::Tensor c, torch::stable::Tensor gW,
                                            torch::stable::Tensor gc, int64_t pos, torch::stable::Tensor ln_w,
                                            torch::stable::Tensor ln_b);

}  // namespace bitttt::ttt
