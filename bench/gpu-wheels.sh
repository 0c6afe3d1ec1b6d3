#!/usr/bin/env bash
# MLX's CUDA build for the lent GPU in three pieces that each travel with the ~30 MB working tree (a device call
# carries at most 64 MiB: the tree plus one piece). Run from the repository root; writes .gpu-1/ .gpu-2/ .gpu-3/
# (git-ignored through .git/info/exclude). Then three device calls back to back (the machine stays warm ~30 s):
#   carry [".gpu-1"]: mkdir -p /tmp/w && cp .gpu-1/* /tmp/w/
#   carry [".gpu-2"]: cp .gpu-2/* /tmp/w/
#   carry [".gpu-3"]: cp .gpu-3/* /tmp/w/ && cd /tmp/w && cat p_aa p_ab p_ac > $(cat NAME) && rm p_a? && cd - &&
#     python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/w/*.whl && OUT=$OUT bash bench/gpu.sh PHASE
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
../shared/gpu/prepare-wheels  # .gpu-a (part_aa, the other wheels, NAME) and .gpu-b (part_ab)
name=$(cat .gpu-a/NAME)
rm -rf .gpu-1 .gpu-2 .gpu-3 /tmp/gpu-join && mkdir -p .gpu-1 .gpu-2 .gpu-3 /tmp/gpu-join
cat .gpu-a/part_aa .gpu-b/part_ab > "/tmp/gpu-join/$name"
(cd /tmp/gpu-join && split -b 30m "$name" p_)
mv /tmp/gpu-join/p_aa .gpu-1/; mv /tmp/gpu-join/p_ab .gpu-2/; mv /tmp/gpu-join/p_ac .gpu-3/
cp .gpu-a/*.whl .gpu-3/ && echo "$name" > .gpu-3/NAME
for d in .gpu-1 .gpu-2 .gpu-3; do grep -qx "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude; done
rm -rf .gpu-a .gpu-b /tmp/gpu-join
du -sh .gpu-1 .gpu-2 .gpu-3
