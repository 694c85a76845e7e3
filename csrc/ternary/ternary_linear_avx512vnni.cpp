#include "ternary/bt2.h"
namespace bitttt::ternary {
const Bt2Kernels& bt2_kernels_avx512vnni() { return bt2_kernels_scalar(); }
}
