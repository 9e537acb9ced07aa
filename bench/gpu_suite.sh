#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md ("Not yet measured") in one go, most important first, each under its own time
# limit so one slow step cannot starve the rest; each command's output is kept in a log.
#
#   bash bench/gpu_suite.sh                     # logs in $OUT when set (the device tool), else in gpu-logs/
#   TEXT=/path/to/tinyshakespeare.txt LOGS=/tmp/logs bash bench/gpu_suite.sh
#
# Limits (seconds) fit the whole suite in about nine minutes on one H200; raise them on a slower GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${LOGS:-${OUT:-gpu-logs}}
text=${TEXT:-../shared/data/tinyshakespeare.txt}
mkdir -p "$logs"
# The repository root on the path: the suite also runs where pocketlm is not pip-installed (a bare GPU machine).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME LIMIT_S COMMAND...: run COMMAND, stop it after LIMIT_S, keep its output in NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "+ $* (limit ${limit} s)" | tee "$logs/$name.txt"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$logs/$name.txt"
    echo "= $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$logs/$name.txt"
}

python3 - <<'EOF' 2>&1 | tee "$logs/versions.txt"
import importlib.metadata as metadata
import torch
for name in ("torch", "transformers", "accelerate", "datasets", "tokenizers", "huggingface_hub", "pyarrow"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name} missing")
print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
EOF

# Training at nanoGPT's shape, bf16 and compiled, against GPT2LMHeadModel (target: at least 1.6x).
step train 170 python3 bench/train_throughput.py --nanogpt --precision bf16 --compile --batch-size 64 --steps 10
# Batch-1 decoding through generate(), default path and static cache + compiled step (target: at least 10x).
step generate 80 python3 bench/generate_throughput.py --models small medium large
step generate_static 120 python3 bench/generate_throughput.py --models small medium --static-compile
# Quality: char-level GPT at nanoGPT's shape, 5,000 steps (target: best validation at most 1.46 nats/char).
step shakespeare 170 python3 bench/shakespeare.py --text "$text" --models char-gpt --steps 5000 --batch-size 64 \
    --mixed-precision bf16 --compile --eval-every 500
# What only a GPU shows of the scale work (tests/test_scale.py proves the rest on CPU processes): fp16 with its
# loss scaler against bf16 and float32, 200 steps of the small preset on the benchmark text, tokens/s in each log;
# and FSDP2 through accelerate, which shards only on GPUs (one process per GPU, the model gathered to be saved).
for precision in no bf16 fp16; do
    step "precision_$precision" 60 python3 train.py --data "$text" --output-dir "$logs/run-$precision" --overwrite \
        --max-steps 200 --eval-every 200 --samples 0 --mixed-precision "$precision"
done
gpus=$(python3 -c "import torch; print(max(1, torch.cuda.device_count()))")
step fsdp 90 python3 -m accelerate.commands.launch --use_fsdp --fsdp_version 2 --num_processes "$gpus" \
    --num_machines 1 --mixed_precision bf16 --dynamo_backend no --fsdp_state_dict_type FULL_STATE_DICT \
    train.py --data "$text" --output-dir "$logs/run-fsdp" --overwrite --max-steps 200 --eval-every 100 --samples 0
