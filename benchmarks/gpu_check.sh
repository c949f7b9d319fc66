#!/usr/bin/env bash
# Every CUDA path of the project in a few minutes on one GPU, then a summary table:
#
#   bash benchmarks/gpu_check.sh            # from the repo root, on a machine with a CUDA GPU
#
# Tiny Shakespeare is downloaded by train.py the first time; without network, put it at
# data/shakespeare_char/input.txt first. Each check's whole output goes to $LOGS/NAME.log
# (default: a temporary folder, printed at the end); a failed check does not stop the others.
set -u
cd "$(dirname "$0")/.."
LOGS=${LOGS:-$(mktemp -d)}
RUNS=$LOGS/runs
BABY="config/train_shakespeare_char.py --max_iters=50 --eval_interval=50 --eval_iters=20 --log_interval=10 --overwrite=True"
NPROC=$(python -c 'import torch; print(torch.cuda.device_count())')
results=()

check() {  # check NAME COMMAND...: run it, keep its log, note pass/fail, seconds and its last useful line
    local name=$1; shift
    local start=$SECONDS
    if "$@" > "$LOGS/$name.log" 2>&1; then status=ok; else status=FAILED; fi
    local line
    line=$(grep -E 'val loss|tokens/s|MFU|acc_norm|error' "$LOGS/$name.log" | tail -1 | cut -c1-110)
    results+=("$(printf '%-22s %-7s %5ss  %s' "$name" "$status" "$((SECONDS - start))" "$line")")
}

python -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU here"; print(torch.__version__, torch.cuda.get_device_name())' || exit 1
check train_auto         python train.py $BABY --out_dir=$RUNS/auto
check torchrun_1         torchrun --standalone --nproc_per_node=1 train.py $BABY --out_dir=$RUNS/torchrun1
if [ "$NPROC" -ge 2 ]; then
  check torchrun_all     torchrun --standalone --nproc_per_node=$NPROC train.py $BABY --out_dir=$RUNS/torchrun_all \
                           --gradient_accumulation_steps=$NPROC
fi
check bf16_compile       python train.py $BABY --out_dir=$RUNS/bf16 --dtype=bfloat16 --compile=True
check fp16_gradscaler    python train.py $BABY --out_dir=$RUNS/fp16 --dtype=float16 --compile=False
check resume             python train.py $BABY --out_dir=$RUNS/auto --init_from=resume --max_iters=60
check sample_kv_cache    python sample.py --out_dir=$RUNS/auto --num_samples=4 --max_new_tokens=300
check sample_compiled    python sample.py --out_dir=$RUNS/auto --num_samples=1 --max_new_tokens=300 --compile=True
check fsdp_1             torchrun --standalone --nproc_per_node=1 train.py $BABY --out_dir=$RUNS/fsdp --parallel=fsdp \
                           --dtype=bfloat16 --compile=False
check fsdp_resume_ddp    python train.py $BABY --out_dir=$RUNS/fsdp --init_from=resume --max_iters=60
check fsdp_ac_offload    torchrun --standalone --nproc_per_node=1 train.py $BABY --out_dir=$RUNS/fsdp_offload \
                           --parallel=fsdp --activation_checkpointing=True --cpu_offload=True --compile=False
check fsdp_compile       torchrun --standalone --nproc_per_node=$NPROC train.py $BABY --out_dir=$RUNS/fsdp_compile \
                           --parallel=fsdp --compile=True --gradient_accumulation_steps=$NPROC
check bench_gpt2         python bench.py --dtype=bfloat16 --compile=True
check bench_gpt2_eager   python bench.py --dtype=bfloat16 --compile=False --generate_tokens=0

echo
echo "GPU check: $(python -c 'import torch; print(torch.cuda.get_device_name())'), torch $(python -c 'import torch; print(torch.__version__)')"
printf '%s\n' "${results[@]}"
echo "logs: $LOGS"
