"""Training throughput against the plain fp32 transformer: `bitttt bench train` (bitttt/bench/train.py).

    python benchmarks/bench_train_step.py [bitttt bench train flags]
"""

import sys

from bitttt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train", *sys.argv[1:]]))
