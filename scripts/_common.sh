# Sourced by the scripts beside it: run from the repository's root, find MNIST, and record the CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export MNIST_DATA_DIR="${MNIST_DATA_DIR:-../shared/data/mnist}"
# Every published figure names the CPU's features: speed differs 3-4x between AVX2 and AVX-512 hosts.
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | xargs), features:" \
     "$(grep -m1 -o -w -E 'avx2|avx512f|avx512_bf16|avx512_vnni|amx_tile' /proc/cpuinfo 2>/dev/null | sort -u | xargs || true)," \
     "cores: $(nproc), load: $(cut -d' ' -f1 /proc/loadavg)" >&2
