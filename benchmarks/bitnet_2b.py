"""BitNet b1.58 2B4T-shaped decode and prefill: bitttt vs llama.cpp (TQ2_0) vs transformers.
The benchmark lives in bitttt/bench/bitnet.py (also `bitttt bench bitnet`); see its --help.

    python benchmarks/bitnet_2b.py --layers 2 --new-tokens 8 --prefill 32          # a quick check
    python benchmarks/bitnet_2b.py --folder /tmp/b30 --new-tokens 16 --lock /work/bench.lock \\
        --json benchmarks/results/bitnet_2b_cpu.json                                # the README's table
"""

import sys

from bitttt.bench.bitnet import main

if __name__ == "__main__":
    sys.exit(main())
