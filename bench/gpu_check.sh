#!/bin/sh
# Issue 12's device check as ONE prepared command, for a session lent a GPU (../shared/GPU.md). From the
# checkout's root, with the device tool:  run(command="sh bench/gpu_check.sh", timeout_s=560)
# Nothing to install: the checkout on PYTHONPATH, CIFAR-shaped random data written in /tmp (150 MB), no
# optuna or Ray. Writes to $OUT (the tool's folder; ./gpu-check elsewhere), at most 5 files:
#   gpu.txt     the device, driver, torch and CUDA versions
#   tests.txt   the GPU tests: captured run vs eager, one captured step vs one eager step, a network the
#               capture refuses, fused members captured vs alone (tests/test_graphs.py, tests/test_fused.py)
#   bench.md    bench/bench_gpu.py's table: one trial eager vs captured, fused K = 1, 2, 4, 8, processes
#   bench.json  the same rows as JSON;  bench.log  its progress and errors
# Planned at about 6 minutes on one H200 (tests about 1, the benchmark about 5), leaving room for one rerun
# inside a 15-minute lease. Each part has its own timeout, so a hang in one still returns the other.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} > "$out/gpu.txt" 2>&1
timeout 150 python3 -m pytest -q -rs -p no:cacheprovider tests/test_graphs.py tests/test_fused.py -k on_a_gpu \
  > "$out/tests.txt" 2>&1
echo "tests exit status $?" >> "$out/tests.txt"
timeout 380 python3 bench/bench_gpu.py --data-dir /tmp/cifar-random --json "$out/bench.json" \
  > "$out/bench.md" 2> "$out/bench.log"
echo "bench exit status $?" >> "$out/bench.log"
cat "$out/gpu.txt" "$out/tests.txt" "$out/bench.md"
tail -n 15 "$out/bench.log"
