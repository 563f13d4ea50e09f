#!/usr/bin/env bash
# `make crosscheck`: runs `oim bench` and an established external load generator,
# inference-perf (from PyPI), against the same simulator (tests/sim) with the same load, and
# fails when TTFT p50, ITL p50 or output tokens/s differ by more than 10%.
#
# inference-perf needs Python >= 3.12 and a Hugging Face tokenizer; it is installed once into
# ~/.cache/oim-crosscheck/ (about 800 MB: transformers, datasets, boto3, ...; no torch), and the
# tokenizer is a tiny word-level one this script writes (tokenizer.py), so nothing is fetched
# from a model hub. (vLLM's guidellm was not used: it requires torch, several GB of CUDA wheels.)
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=0.7.0
CACHE=${OIM_CROSSCHECK_CACHE:-$HOME/.cache/oim-crosscheck}
VENV=$CACHE/inference-perf-$VERSION
TTFT_MS=${TTFT_MS:-200} ITL_MS=${ITL_MS:-25} OUT=${OUT:-16} IN=${IN:-64}

python312() {
  for p in python3.13 python3.12 "$HOME"/.pyenv/versions/3.13*/bin/python3 "$HOME"/.pyenv/versions/3.12*/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  echo "inference-perf needs Python >= 3.12; install python3.12 (or newer) and run again" >&2
  return 1
}

if [ ! -x "$VENV/bin/inference-perf" ]; then
  PY=$(python312)
  echo "installing inference-perf $VERSION into $VENV (once)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "inference-perf==$VERSION"
fi

cargo build --release --locked --quiet --bin oim --bin oim-vllm-sim
WORK=$(mktemp -d /tmp/oim-crosscheck.XXXXXX)
SIM_PID=
cleanup() { [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

"$VENV/bin/python" tests/crosscheck/tokenizer.py "$WORK/tokenizer"
./target/release/oim-vllm-sim serve sim/llama --port 0 --ttft-ms "$TTFT_MS" --itl-ms "$ITL_MS" >"$WORK/sim.out" 2>"$WORK/sim.err" &
SIM_PID=$!
for _ in $(seq 50); do grep -q listening "$WORK/sim.out" 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/^listening on //p' "$WORK/sim.out")
echo "simulator at $URL: TTFT ${TTFT_MS} ms, ITL ${ITL_MS} ms; ${IN} prompt and ${OUT} output tokens"

# Each level long enough that ramp-up and ramp-down are a small part of it: 16 requests one at a
# time, 10 waves of 16.
for c in 1:16 16:160; do
  ./target/release/oim bench --url "$URL" --model sim/llama --api completions --concurrency "${c%:*}" \
    --requests "${c#*:}" --input-tokens "$IN" --output-tokens "$OUT" --no-progress --save "$WORK/oim-${c%:*}.json"
done

cat >"$WORK/inference-perf.yaml" <<YAML
api: {type: completion, streaming: true}
data:
  type: random
  input_distribution: {min: $IN, max: $IN, mean: $IN, std_dev: 0, total_count: 176}
  output_distribution: {min: $OUT, max: $OUT, mean: $OUT, std_dev: 0, total_count: 176}
load:
  type: concurrent
  stages:
    - {num_requests: 16, concurrency_level: 1}
    - {num_requests: 160, concurrency_level: 16}
  num_workers: 1
server: {type: vllm, model_name: sim/llama, base_url: "$URL", ignore_eos: true}
tokenizer: {pretrained_model_name_or_path: "$WORK/tokenizer"}
storage: {local_storage: {path: "$WORK/reports"}}
report: {request_lifecycle: {summary: true, per_stage: true}}
YAML
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV/bin/inference-perf" --config_file "$WORK/inference-perf.yaml" >"$WORK/inference-perf.log" 2>&1 \
  || { tail -30 "$WORK/inference-perf.log"; exit 1; }
python3 tests/crosscheck/compare.py "$WORK/reports" 0.10 "$WORK/oim-1.json" "$WORK/oim-16.json"
