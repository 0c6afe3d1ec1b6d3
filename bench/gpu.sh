#!/usr/bin/env bash
# moed's benchmarks on the lent GPU machine (MLX's CUDA build), in phases that each fit one device call.
#   bench/gpu.sh setup   # after MLX CUDA is in /tmp/site (../shared/gpu/README.md): bench model + store,
#                               # upload paths, greedy exactness at 100 % and 25 %
#   bench/gpu.sh bench   # moed bench against mlx-lm: budgets, read modes, the synced path for comparison
#   bench/gpu.sh clients # concurrent sequences through the daemon at 100 % and 25 %
#   bench/gpu.sh fixture # bench/train_variants.py: fixture recipes trained side by side, the best one back (~6 min)
#   bench/gpu.sh speculation # the trained fixture (tests/fixtures/trained-moe) converted to a store; moed bench
#                               # --speculation off,lookup at 100 % and 25 %, quote/quote-train/free, then a random
#                               # small model at 25 % (drafts fail there) (~5 min)
#   bench/gpu.sh numerics  # row-count numerics of multi-row passes, a speculating request's passes timed (~6 min)
#   bench/gpu.sh thrash    # MLX's cuDNN attention-plan cache against new key lengths, with moed's setting (~1.5 min)
#   bench/gpu.sh model|profile|paired|upload|paths|host|readpath|exact|serve
#                               # a short visit, one phase per step: the model; where a step goes; 100 % against
#                               # mlx-lm (in one process, alternated); upload candidates; 25 % per
#                               # upload path and read mode; where a synced layer call goes; the read path alone;
#                               # exactness; the daemon
# MLX CUDA gets there with bench/gpu-wheels.sh (three pieces, three calls).
# Writes JSON under $OUT (default /tmp/out). The model lives in /tmp/moed-models (it does not travel); making it took
# 2.5 to over 4 minutes on the lent machine: leave room for it, and do not pipe a phase through grep (a buffered pipe
# loses its output when the call times out).
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root: `python3 -m bench.X` imports bench/ from here
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/mp/moed
for d in daemon clients governor; do ln -sfn "$PWD/$d" "/tmp/mp/moed/$d"; done
export PYTHONPATH=/tmp/site:/tmp/mp
M=/tmp/moed-models; CK=$M/bench; ST=$M/bench-store
moed() { python3 -m moed.daemon.cli "$@"; }
single() { python3 -m moed.daemon.bench.single "$1"; }
# moed_run BUDGET READ_MODE EXTRA_JSON: one teacher-forced moed run of the store (prompt 16, 64 steps)
moed_run() { single "{\"kind\": \"moed\", \"store\": \"$ST\", \"budget\": \"$1\", \"read_mode\": \"$2\", \"prompt_len\": 16, \"steps\": 64, $3}"; }
# run_to FILE LABEL BUDGET READ_MODE EXTRA_JSON: moed_run, its record appended to FILE, its figures printed
run_to() {
  local r; r=$(moed_run "$3" "$4" "$5")
  echo "{\"label\": \"$2\", \"record\": $r}" >> "$1"
  python3 -c 'import json,sys; r=json.loads(sys.argv[2]); print(sys.argv[1], *(f"{k}={r.get(k) if not isinstance(r.get(k), float) else round(r[k], 2)}" for k in ("forced_decode_tps","decode_wait_ms_per_token","decode_sync_ms_per_token","decode_synced_call_ms_per_token","syncs_per_token","decode_hit_rate","decode_bytes_read_per_token")), {k: round(v, 2) for k, v in r.get("phases_ms_per_token", {}).items()})' "$2" "$r"
}
make_model() { [ -d "$ST" ] || { moed make-test-model "$CK" --size bench >/dev/null; moed convert "$CK" "$ST" --quiet; }; }
case "${1:-}" in
setup)
  python3 -c "import mlx.core as mx; print(mx.default_device(), mx.__version__)"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  make_model
  python3 -m bench.upload "$ST" --experts 128 > "$OUT/upload.json"
  python3 -m bench.exact "$ST" "$CK" --budgets 100%,25% --tokens 64 --out "$OUT/exact.json" | tail -30
  ;;
bench)
  moed bench "$ST" --reference "$CK" --budgets 100,50,25,12.5 --depths 0,1,2 --read-modes direct,buffered \
    --policies lfu --prompt-len 128 --steps 64 --sample-tokens 64 --repeat "${REPEAT:-3}" --no-restart \
    --out "$OUT/bench.json" | tail -30
  moed_run 100% buffered '"sample_tokens": 64, "unsynced": false' > "$OUT/synced100.json"  # per-layer sync
  ;;
clients)
  moed bench "$ST" --clients 1,2,4,8 --cache-budget 100% --steps 64 --prompt-len 32 --out "$OUT/clients100.json"
  moed bench "$ST" --clients 1,2,4,8 --cache-budget 25% --steps 32 --prompt-len 32 --out "$OUT/clients25.json"
  ;;
model)  # the bench model and store only
  make_model
  ;;
profile)  # where a step goes: build vs device, pipelined, BatchGenerator at 1/4/8, moed's variants (~1.5 min)
  python3 -m bench.steps "$CK" "$ST" --steps 64 --batch 1,4,8 --variants > "$OUT/steps.json"
  ;;
upload)  # the upload candidates of bench/upload.py, the CUDA driver's included (~30 s)
  python3 -m bench.upload "$ST" --experts 128 > "$OUT/upload.json"
  ;;
host)  # 25 % page cache: where a synced call goes (phases), twice; the synced path at 100 % (~2 min)
  f="$OUT/host.jsonl"
  for i in 1 2; do
    run_to "$f" "phases-$i" 25% buffered '"sample_tokens": 0, "read_threads": 8'
  done
  run_to "$f" synced-100 100% buffered '"sample_tokens": 0, "unsynced": false'
  ;;
paired)  # 100 %: mlx-lm and moed (copy, plain, copy with bookkeeping off) in one process, alternated (~2 min)
  python3 -m bench.paired "$CK" "$ST" --rounds "${ROUNDS:-7}" --tokens 128 --uploads copy,plain --bare \
    --out "$OUT/paired.json" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({k: r[k] for k in ("median", "ratio", "synced_calls")}))'
  ;;
readpath)  # the read path alone against the raw device, direct and page cache, twice (~1.5 min)
  for i in 1 2; do for m in direct buffered; do
    single "{\"kind\": \"readpath\", \"store\": \"$ST\", \"read_mode\": \"$m\", \"read_threads\": 4}" >> "$OUT/readpath.jsonl"
    tail -1 "$OUT/readpath.jsonl" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["read_mode"], round(r["moed_gb_per_s"], 3), round(r["raw"]["gb_per_s"], 3), round(r["ratio"], 3))'
  done; done
  ;;
paths)  # 25 %: page cache through each upload path (managed.py), direct reads, the read path alone (~3 min)
  for u in copy plain; do
    moed_run 25% buffered "\"sample_tokens\": 0, \"read_threads\": 8, \"upload\": \"$u\"" > "$OUT/moed25-buffered-$u.json"
  done
  moed_run 25% direct '"sample_tokens": 0' > "$OUT/moed25-direct.json"
  for m in buffered direct; do
    single "{\"kind\": \"readpath\", \"store\": \"$ST\", \"read_mode\": \"$m\", \"read_threads\": 4}" > "$OUT/readpath-$m.json"
  done
  ;;
exact)  # greedy tokens against mlx-lm at 100 % and 25 %
  python3 -m bench.exact "$ST" "$CK" --budgets 100%,25% --tokens 64 --out "$OUT/exact.json" | tail -8
  ;;
serve)  # concurrent sequences through the daemon at 100 % (~2 min)
  moed bench "$ST" --clients 1,4,8 --cache-budget 100% --steps 64 --prompt-len 32 --out "$OUT/clients100.json" | tail -5
  ;;
fixture)  # train the fixture recipes of bench/train_variants.py side by side (~6 min); the winner comes back as
  # fixture.tar.part-* (cat them, untar into tests/fixtures/trained-moe), every variant's record in variants.tar
  python3 -m bench.train_variants /tmp/fx --max-seconds "${SECONDS_EACH:-300}" || true
  tar -C /tmp/fx -cf "$OUT/variants.tar" summary.json $(cd /tmp/fx && ls -d */training.json *.log 2>/dev/null)
  if [ -d /tmp/fx/winner ]; then
    tar -C /tmp/fx/winner -cf /tmp/fixture.tar . && split -b 15m /tmp/fixture.tar "$OUT/fixture.tar.part-"
  fi
  ;;
speculation)  # the trained fixture: real routing; speculation off vs lookup, alternated (REPEAT rounds), 25 % first
  FX=${FIXTURE:-tests/fixtures/trained-moe}; FS=$M/trained-store
  rm -rf "$FS"; moed convert "$FX" "$FS" --quiet  # small: always from the fixture given
  python3 -c "import mlx.core as mx; print(mx.default_device(), mx.__version__)"
  ref=(--reference "$FX")
  # BUDGETS, MODES, WORKLOADS, NUM_DRAFT (adaptive K's most drafts per pass), TOKENS, REPEAT: see moed bench --help;
  # BUDGETS="" leaves the fixture out (only the random model then)
  for b in ${BUDGETS-25 100}; do  # one bench per budget: each writes its JSON as soon as it ends
    moed bench "$FS" "${ref[@]}" --speculation "${MODES:-off,lookup}" \
      --budgets "$b" --max-tokens "${TOKENS:-128}" --prompts 3 --repeat "${REPEAT:-3}" --pass-rows 1,2,3,5,9 \
      ${NUM_DRAFT:+--num-draft "$NUM_DRAFT"} --workloads "${WORKLOADS:-quote,quote-train,free}" \
      --out "$OUT/speculation-$b.json" --results "$OUT/speculation.md" --note "lent GPU, bench/gpu.sh speculation"
    ref=()
  done
  # where drafts fail: a random-weight model (prompt lookup finds next to nothing), to show speculation costs nothing
  if [ "${RANDOM_MODEL:-1}" = 1 ]; then
    R=$M/small-bfloat16
    [ -d "$R-store" ] || { [ -d "$R" ] || moed make-test-model "$R" --size small >/dev/null; moed convert "$R" "$R-store" --quiet; }
    moed bench "$R-store" --speculation off,lookup --workloads free,quote --budgets 25 --max-tokens "${TOKENS:-128}" \
      --prompts 3 --repeat "${REPEAT:-3}" --out "$OUT/speculation-random-25.json" --results "$OUT/speculation.md" \
      --note "lent GPU, bench/gpu.sh speculation, random-weight small model"
  fi
  ;;
numerics)  # does a token's logits depend on its pass's row count (bench/row_numerics.py, mlx-lm alone), and where
  # a speculating request's time goes pass by pass (bench/pass_times.py), on random small models in bf16 and float32
  for d in bfloat16 float32; do
    [ -d "$M/small-$d-store" ] || { moed make-test-model "$M/small-$d" --size small --dtype $d >/dev/null
                                     moed convert "$M/small-$d" "$M/small-$d-store" --quiet; }
  done
  timeout 150 python3 -m bench.pass_times "$M/small-bfloat16-store" --out "$OUT/pass-times-bf16.json" || true
  timeout 250 python3 -m bench.row_numerics tests/fixtures/trained-moe "$M/small-bfloat16" "$M/small-float32" \
    --out "$OUT/row-numerics.json" || true
  timeout 120 python3 -m bench.pass_times "$M/small-float32-store" --out "$OUT/pass-times-fp32.json" || true
  ;;
thrash)  # MLX's cuDNN attention-plan cache against new key lengths (bench/sdpa_thrash.py): MLX's default, moed's
  # setting, and the same passes without cuDNN (~1.5 min)
  [ -d "$M/small-bfloat16" ] || moed make-test-model "$M/small-bfloat16" --size small >/dev/null
  for env in "" --moed-env; do
    timeout 150 python3 -m bench.sdpa_thrash "$M/small-bfloat16" --passes 1100 $env >> "$OUT/sdpa-thrash.jsonl" || true
  done
  MLX_CUDA_USE_CUDNN_SDPA=0 timeout 100 python3 -m bench.sdpa_thrash "$M/small-bfloat16" --passes 300 \
    >> "$OUT/sdpa-thrash.jsonl" || true
  cat "$OUT/sdpa-thrash.jsonl"
  ;;
*) echo "usage: $0 setup|model|profile|paired|upload|paths|host|readpath|exact|serve|bench|clients|fixture|speculation|numerics|thrash" >&2
   exit 2 ;;
esac
