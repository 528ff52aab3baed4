#!/usr/bin/env bash
# GPU check for llama.cpp's RPC backend (issue 14), run on a CUDA machine through
# the device tool: builds ggml-rpc-server and llama-bench from the llama.cpp that
# llama-cpp-python 0.3.36 vendors (carried as .device/llama.cpp.tgz), then
# measures, on synthetic Llama-shaped models, (1) tokens/s through an RPC server
# on this GPU against the GPU used directly and (2) the buffers llama.cpp
# allocates per device (CUDA, RPC-backed CUDA, both), for llmtune's planner.
#
# Prepare the source here first (the device machine reaches no network), from
# llama-cpp-python 0.3.36's source distribution, then carry .device:
#   pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/sd
#   mkdir -p /tmp/sd/x && tar xzf /tmp/sd/llama_cpp_python-0.3.36.tar.gz -C /tmp/sd/x
#   cd /tmp/sd/x/llama_cpp_python-0.3.36/vendor/llama.cpp && mkdir -p "$REPO/.device" &&
#   tar czf "$REPO/.device/llama.cpp.tgz" --exclude=tools/server --exclude=tools/ui \
#     CMakeLists.txt cmake common ggml include src tools vendor gguf-py licenses LICENSE
# (.device is ignored through .git/info/exclude), then through the device tool:
#   run(command="bash scripts/gpu_check_rpc.sh", carry=[".device"], timeout_s=580)
# Measured 2026-12-04 on an H200: README, Performance.
set -u
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
ROOT=$(pwd)
WORK=/tmp/gpucheck
mkdir -p "$WORK/src" "$WORK/models"
tar xzf .device/llama.cpp.tgz -C "$WORK/src"
nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
nproc >> "$OUT/gpu.txt"
start=$(date +%s)
cmake -S "$WORK/src" -B "$WORK/build" -G Ninja -DGGML_CUDA=ON -DGGML_RPC=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_APP=OFF \
  -DCMAKE_BUILD_TYPE=Release > "$OUT/build.log" 2>&1
timeout 400 cmake --build "$WORK/build" --target ggml-rpc-server llama-bench -j 16 >> "$OUT/build.log" 2>&1
echo "build rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
BIN="$WORK/build/bin"
[ -x "$BIN/llama-bench" ] && [ -x "$BIN/ggml-rpc-server" ] || { tail -40 "$OUT/build.log"; exit 1; }

# Sparse synthetic models (zero weights read at full cost): Llama 3 8B and 1B shapes, Q4_K.
PYTHONPATH="$WORK/src/gguf-py:$ROOT/tests" python3 - <<'PY' >> "$OUT/gpu.txt" 2>&1
from gguf import GGMLQuantizationType as Q
from synth import llama_like
llama_like("/tmp/gpucheck/models/8b.gguf", n_layer=32, n_embd=4096, n_head=32, n_head_kv=8,
           n_ff=14336, n_vocab=128256, n_ctx_train=8192, weight_type=Q.Q4_K, embd_type=Q.Q6_K,
           output_type=Q.Q6_K, file_type=15)
llama_like("/tmp/gpucheck/models/1b.gguf", n_layer=16, n_embd=2048, n_head=32, n_head_kv=8,
           n_ff=8192, n_vocab=128256, n_ctx_train=8192, weight_type=Q.Q4_K, embd_type=Q.Q6_K,
           output_type=Q.Q6_K, file_type=15)
print("models written")
PY
"$BIN/ggml-rpc-server" -H 127.0.0.1 -p 50052 > "$OUT/rpc-server.log" 2>&1 &
RPC_PID=$!
sleep 3
RPC=127.0.0.1:50052
B="$BIN/llama-bench"
# Speed: the same GPU directly and through the RPC server on loopback.
for m in 1b 8b; do
  for dev in CUDA0 RPC0; do
    timeout 90 "$B" -m "$WORK/models/$m.gguf" -rpc $RPC -dev $dev -ngl 99 -fa 1 -p 512 -n 128 -r 3 -o jsonl \
      >> "$OUT/bench.jsonl" 2>> "$OUT/bench.err"
  done
done
# Buffers: -v prints llama.cpp's load log; n_ctx = 4096 (prompt only).
run_v() {  # label, then llama-bench arguments
  label=$1; shift
  echo "=== $label" >> "$OUT/buffers.log"
  timeout 60 "$B" -m "$WORK/models/8b.gguf" -rpc $RPC -p 4096 -n 0 -r 1 -v "$@" 2>&1 \
    | grep -E "buffer size|pipeline|using device|offloaded|assigned to device RPC|graph splits|n_ctx  |flash_attn|error" \
    | grep -v "assigned to device CPU" >> "$OUT/buffers.log"
}
run_v "cuda full fa1" -dev CUDA0 -ngl 99 -fa 1
run_v "cuda full fa0" -dev CUDA0 -ngl 99 -fa 0
run_v "cuda partial ngl16 fa1" -dev CUDA0 -ngl 16 -fa 1
run_v "rpc full fa1" -dev RPC0 -ngl 99 -fa 1
run_v "rpc partial ngl16 fa1" -dev RPC0 -ngl 16 -fa 1
run_v "rpc+cuda full fa1" -dev RPC0/CUDA0 -ngl 99 -fa 1
run_v "rpc+cuda full fa0 ts 1,3" -dev RPC0/CUDA0 -ngl 99 -fa 0 -ts 1/3
kill $RPC_PID 2>/dev/null
echo "done in $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
