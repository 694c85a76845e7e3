// Repetition macros for the peak kernels: one accumulator chain per index, written out so
// that each chain is a named local (GCC keeps an array of vector accumulators in memory,
// storing every chain after every instruction).
#pragma once

#define BITTTT_X8(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
#define BITTTT_X11(M) BITTTT_X8(M) M(8) M(9) M(10)
#define BITTTT_X12(M) BITTTT_X11(M) M(11)
