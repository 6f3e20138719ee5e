# The pipeline as files: each stage reads the previous stage's files and writes its own.
#   make demo    set up (venv, embedded model), then every stage on the synthetic world; prints the results
#   make test    the test suite
# Re-running skips stages whose outputs are up to date; a killed training stage resumes from its checkpoint.
# Real data: see README.md ("Real data"), e.g. make demo RUN=runs/real CATALOG=... LOGS=... ID_INFO=... ID_META=...

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# every stage waits for the venv; the tests run the stages with their own interpreter: VENV_STAMP=
VENV_STAMP ?= $(VENV)/.installed
export PYTHONUNBUFFERED := 1

RUN ?= runs/demo
# the embedded model (SmolLM2-135M-Instruct, 30 decoder layers) cut to its first LAYERS (model.py truncate): half
# the compute per token, so 480 SFT steps take the time of the whole model's 240, and DPO and evaluation half
# theirs; on the validation window of two worlds it ranked as well or better (EXPERIMENTS.md, "Half the layers").
# LAYERS= (empty) or 30: the whole model. MODEL=<folder> takes any local Llama folder instead (LAYERS then unused).
LAYERS ?= 15
EMBEDDED := models/smollm2-135m
MODEL ?= $(EMBEDDED)$(if $(filter-out 30,$(LAYERS)),-l$(LAYERS))
DEVICE ?= auto
SEED ?= 0
# processes for sft.py, dpo.py and evaluate.py: NPROC=8 runs them under torchrun (ddp.py), one per GPU with
# DEVICE=cuda, or as CPU processes; the global batch, the schedule and the results stay those of one process.
# NPROC=1 keeps the plain command lines, so the stamps of existing runs still match. (The `--`: torchrun would
# take evaluate.py's --run for an abbreviation of its own --run-path.)
NPROC ?= 1
LAUNCH = $(if $(filter-out 1,$(NPROC)),$(PY) -m torch.distributed.run --standalone --nproc-per-node $(NPROC) --,$(PY))

# --- the synthetic world (ignored when CATALOG / LOGS point at real files)
TRACKS ?= 2000
USERS ?= 400
WORLD := $(RUN)/world
CATALOG ?= $(WORLD)/catalog.csv
LOGS ?= $(WORLD)/userid_trackid_timestamp.tsv
ID_INFO ?= $(WORLD)/id_information.csv
ID_META ?= $(WORLD)/id_metadata.csv

# --- sizes of the default run, chosen to finish within 20 minutes on 2 CPU cores (18 min 33 s from a clean clone
# with 720 SFT steps and 1,000 test next plays, 16 min 21 s with 200, 11-15 with the 480 steps before:
# EXPERIMENTS.md, "Timings of `make demo`")
# what the Semantic IDs encode: audio (the seed's 10 features), genre (one-hot), collab (training-window
# co-listening), quality (each track's training-window long-listen rate: a preference DPO learns on one code then
# carries to every track holding it; EXPERIMENTS.md, "Listening quality in the IDs"); SIGNALS=audio is the seed's IDs,
# SIGNALS=audio,genre,collab the demo's before 2026-12-02 (README: the ablation table compares them); a fifth block,
# attrs (the request phrases that hold for each track), was tried and not kept (EXPERIMENTS.md, "Attribute phrases in the IDs")
SIGNALS ?= audio,genre,collab,quality
# SEED_CONFIG=1: the seed notebook's configuration in one option: the whole model (240 SFT steps, the time of 480 of
# the 15-layer cut's, the demo's until 2026-12-07), audio-only IDs, prompts that name the track, SFT loss on the answers only, and pure DPO (no NLL term)
SEED_CONFIG ?=
ifeq ($(SEED_CONFIG),1)
LAYERS := 30
SFT_STEPS := 240
SIGNALS := audio
CONTEXT_TEXT := name
PROMPT_ID_WEIGHT := 0
ATTRIBUTE_EXAMPLES := 2000
SFT_TARGETS := example
SEED_DPO_ARGS := --rpo-alpha 0
EARLIER_DPO := 1
endif
# DEMO_OF=2026-12-07: the demo's options before its SFT went from 480 steps to 720 (the ablation's `demo-1207` row).
# DEMO_OF=2026-12-06: that, and the demo's options before the long-listen rate went to the last code alone (the ablation's
# `demo-1206` row): every code reads every block of the IDs. DEMO_OF=2026-12-05: that, and DPO as it ran before SFT
# replay (the ablation's `demo-1205` row): beta 0.1, no replay. DEMO_OF=2026-12-04: that, and that day's attribute
# requests (the ablation's `demo-1204` row): 2,000 of them, SFT toward each example's own answer, the prompt's IDs
# at weight 1. DEMO_OF=2026-12-01: the demo of that day (the ablation's `layers15` row): that, with IDs without the
# quality block and the earlier DPO (below). Options on the command line still win.
DEMO_OF ?=
ifneq ($(filter 2026-12-01 2026-12-04 2026-12-05 2026-12-06 2026-12-07,$(DEMO_OF)),)
SFT_STEPS := 480
TEST_NEXT := 200
HALLUCINATION_PROMPTS := 0
endif
ifneq ($(filter 2026-12-01 2026-12-04 2026-12-05 2026-12-06,$(DEMO_OF)),)
LAST_LEVEL_SIGNALS :=
endif
ifneq ($(filter 2026-12-01 2026-12-04 2026-12-05,$(DEMO_OF)),)
DPO_BETA := 0.1
SFT_REPLAY := 0
endif
ifneq ($(filter 2026-12-01 2026-12-04,$(DEMO_OF)),)
ATTRIBUTE_EXAMPLES := 2000
SFT_TARGETS := example
PROMPT_ID_WEIGHT := 1
endif
ifeq ($(DEMO_OF),2026-12-01)
SIGNALS := audio,genre,collab
EARLIER_DPO := 1
HALLUCINATION_PROMPTS := 40
else ifneq ($(filter-out 2026-12-04 2026-12-05 2026-12-06 2026-12-07,$(DEMO_OF)),)
$(error DEMO_OF=$(DEMO_OF): the earlier demos kept are DEMO_OF=2026-12-07, 2026-12-06, 2026-12-05, 2026-12-04 and 2026-12-01)
endif
# the DPO of the demo before 2026-12-02 (SEED_CONFIG=1 and DEMO_OF=2026-12-01): 80 steps of 8 of 640 training
# pairs, the weights of the best accuracy on the validation pairs, beta 0.1, no replay
ifeq ($(EARLIER_DPO),1)
DPO_BETA := 0.1
SFT_REPLAY := 0
TRAIN_PAIRS := 640
DPO_BATCH := 8
DPO_PAIRS_PER_PROMPT := 1
DPO_SELECT := accuracy
endif
# blocks of SIGNALS that only the last code quantises (rvq.py --last-level-signals): quality keeps the long-listen
# rate out of the first two codes, which then name genre, sound and co-listening alone; attribute requests +0.02 to
# +0.05 on three worlds, DPO's preferences as before, next tracks 0.000-0.055 HR@10 lower on test (README, "What the
# 2026-12-06 change bought"): the demo's since 2026-12-06. Empty: every code reads every block (DEMO_OF=2026-12-06)
LAST_LEVEL_SIGNALS ?= quality
# a block the IDs do not read is nobody's to hold back: with SIGNALS=audio (SEED_CONFIG=1) or without quality, none
# (a value given on the command line still stands, and rvq.py names the mismatch)
comma := ,
LAST_LEVEL_SIGNALS := $(filter $(subst $(comma), ,$(SIGNALS)),$(LAST_LEVEL_SIGNALS))
RVQ_ARGS ?=
# plays a next-track prompt shows: the context track and up to HISTORY - 1 plays before it
HISTORY ?= 1
# what a next-track prompt shows of the context track: genre (its genre and Semantic ID), id (the ID alone), name
# (its artist, title, genre and ID: the format before 2026-12-01) or words (its genre, attribute phrases and ID:
# better attribute requests, a quarter more SFT time; EXPERIMENTS.md, "The context track's words"); shorter prompts, cheaper
# steps (EXPERIMENTS.md, "Shorter prompts")
CONTEXT_TEXT ?= genre
LEVELS ?= 3
CODEBOOK ?= 32
# attribute requests among the SFT examples ("upbeat rock"): 32,000 of the ~50,000, each trained toward its whole
# answer set (SFT_TARGETS=group): SFT's precision@10 +0.22, +0.13 and +0.17 on the test windows of seeds 0, 1 and 2,
# its next-track HR@10 within the noise (-0.005 to -0.030), DPO's down by up to 0.055 (EXPERIMENTS.md, "Attribute
# requests trained toward their answer sets").
# 2,000, each toward one answer, until 2026-12-05 (DEMO_OF=2026-12-04): SFT then ranked them as genre popularity does
ATTRIBUTE_EXAMPLES ?= 32000
GROUNDING_EXAMPLES ?= 1000
# next-track test queries: 1,000 since the night of 2026-12-07, 200 before (and in every DEMO_OF and ablation row),
# whose paired HR@10 intervals were some 0.08 wide: on seed 0's 200 DPO - SFT was -0.045 [-0.085, -0.010], on 1,000
# of the same window -0.010 [-0.026, +0.006]. 1,000 narrow them to about 0.03 for 1-2 minutes more of evaluation
# (its ~600 distinct prompts each ranked once; EXPERIMENTS.md, "A test window of 1,000 next plays")
TEST_NEXT ?= 1000
# attribute test requests: 40 until 2026-12-03, whose precision@10 intervals were about 0.23 wide; 120 narrow them to
# about 0.13 for some 20 more seconds of evaluation per model
TEST_ATTRIBUTES ?= 120
# SFT steps: 720 since the evening of 2026-12-07, 480 before (DEMO_OF=2026-12-07). With the attribute requests
# trained toward their answer sets, more steps keep raising them: at 720, attribute precision@10 +0.062 to +0.093 for SFT and DPO on the
# test windows of three worlds (intervals above 0), hallucinated@1 down to 0-0.6%, next tracks and DPO's preference
# accuracy within the noise; about 3 more minutes of the demo (README, "What 720 SFT steps bought")
SFT_STEPS ?= 720
SFT_BATCH ?= 16
# what SFT trains each answer toward (sft.py --answer-targets): example, the example's own answer alone; group, the
# answers of every training example asked the same thing (every track that answers an attribute request; a context
# track's next plays): a request's answer set at once, where one answer each ranked as genre popularity does;
# colisten, group and a next track's co-listened tracks by count (tried, not kept: EXPERIMENTS.md, "Group targets")
SFT_TARGETS ?= group
# weight of the prompt's own Semantic IDs in the SFT loss (sft.py --prompt-id-weight; 0: the answers only): at 1 they
# took hallucinated@1 from 17.5% to 0%, but with the attribute requests as most of the examples they crowd the
# answer sets out (validation precision@10 -0.06 at 1 against 0); 0.25 keeps all but 0.015 of that and hallucinated@1
# at 1.5% where 0 had 4.5% (EXPERIMENTS.md, "Attribute requests trained toward their answer sets")
PROMPT_ID_WEIGHT ?= 0.25
SFT_ARGS ?=
DPO_STEPS ?= 80
# a DPO step: DPO_BATCH prompts and up to DPO_PAIRS_PER_PROMPT pairs of each, the pairs of one context sharing one
# forward of its prompt (~90% of a pair's tokens), so 2.7x the pairs of a step of 8 in its time (EXPERIMENTS.md, "More
# pairs per DPO step"); DPO_PAIRS_PER_PROMPT=1: steps of DPO_BATCH pairs of any prompts (the demo before 2026-12-02)
DPO_BATCH ?= 4
DPO_PAIRS_PER_PROMPT ?= 8
# pairs per forward of the grouped steps: a step's 4 x 8 in one
DPO_MICRO_BATCH ?= 32
# the DPO weights kept: last (the final ones) or accuracy (the step of the best accuracy on the VAL_PAIRS validation
# pairs, which at 96 pairs chose by chance: EXPERIMENTS.md, "96 validation pairs choose DPO's checkpoint by chance")
DPO_SELECT ?= last
# DPO's beta: at 0.1 the preference term's gradient starts at a fifth of the NLL term's beside it; 0.5 alone gained
# preference accuracy on three worlds but ranked seed 2's test next tracks below SFT (EXPERIMENTS.md, "DPO's beta
# 0.5"); with SFT_REPLAY beside it, 0.5 since 2026-12-05 (DEMO_OF=2026-12-05: 0.1, no replay)
DPO_BETA ?= 0.5
# SFT examples replayed each DPO step with SFT's own loss (dpo.py --sft-replay; 0: off): DPO's pairs are all
# next-track answers, and alone they cost attribute requests 0.02-0.05 precision@10; with 8 a step and beta 0.5,
# against the demo's DPO before (beta 0.1, no replay), validation preference accuracy +0.013 to +0.022 and attribute
# precision@10 +0.008 to +0.015 on three worlds, HR@10 -0.010 to +0.005; on the test windows +0.007 to +0.023
# precision@10, -0.001 to +0.016 accuracy, HR@10 +0.000 to +0.010 (EXPERIMENTS.md, "SFT replay in DPO")
SFT_REPLAY ?= 8
DPO_ARGS ?=
# training pairs kept (0: all of them, which the grouped steps need to find a context's pairs together); the
# reference log-probs are computed once for each pair a step draws
TRAIN_PAIRS ?= 0
VAL_PAIRS ?= 96
TEST_PAIRS ?= 700
PREFS_ARGS ?=
SASREC_ARGS ?=
# test prompts evaluate.py decodes without constraints, per model (0: every one): 320, the first 200 next-track
# queries and the 120 attribute requests (every test prompt from 2026-12-04 until TEST_NEXT went to 1,000; all 1,120,
# each query ranked alone, took seed 0's evaluation from 4.5 to 8.4 minutes): the interval of hallucinated@1 then
# tells the target of under 5% from 0%, which 40 prompts (the demo's until 2026-12-03, and DEMO_OF=2026-12-01's and
# the ablation's history rows') could not: one answer was 2.5%. Always on the command line, so that a run evaluated
# before re-evaluates (its stamp changes)
HALLUCINATION_PROMPTS ?= 320
EVAL_ARGS ?=

ID_OPTS := $(if $(ID_INFO),--id-information $(ID_INFO)) $(if $(ID_META),--id-metadata $(ID_META))

.PHONY: demo setup venv model test bench ablation clean-run help
.DELETE_ON_ERROR:

help:
	@echo "make demo    # set up and run the whole pipeline on the embedded default (about 18 min on 2 cores; EXPERIMENTS.md: timings)"
	@echo "make test    # run the tests"
	@echo "make bench   # the benchmarks (see BENCHMARKS.md)"
	@echo "make ablation  # the configurations side by side (README: the ablation table)"

demo: $(RUN)/eval/report.md
	@echo
	@cat $(RUN)/eval/summary.txt
	@echo
	@echo "report: $(RUN)/eval/report.md   plots: $(RUN)/eval/*.png"
	@echo "ask for music: $(PY) ask.py --run $(RUN) \"upbeat dance tracks for a party\""

setup: venv model

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.peers: $(VENV)/.installed requirements-bench.txt requirements-bench-nodeps.txt
	$(PIP) install -q -r requirements-bench.txt
	$(PIP) install -q --no-deps -r requirements-bench-nodeps.txt
	touch $@

model: $(MODEL)/config.json
$(EMBEDDED)/config.json: | $(VENV_STAMP)
	$(PY) model.py setup --out $(EMBEDDED)
ifeq ($(MODEL),$(EMBEDDED)-l$(LAYERS))
$(MODEL)/config.json: $(EMBEDDED)/config.json
	$(PY) model.py truncate --model $(EMBEDDED) --out $(MODEL) --layers $(LAYERS)
else ifneq ($(MODEL),$(EMBEDDED))
$(MODEL)/config.json:
	@echo "MODEL=$(MODEL): no config.json there; MODEL must be a local Hugging Face Llama folder" >&2; exit 1
endif

# Each stage also depends on a stamp holding its command line, rewritten only when that line changes: so
# `make demo SFT_STEPS=300` on an existing run reruns SFT and every stage after it, and a second `make demo`
# still runs nothing. The stamp spells the run folder <RUN>, so a run moved or copied elsewhere stays up to date.
# (Only for the goals that run stages: `make test` or `make help` write nothing.)
ifneq ($(filter demo bench ablation,$(MAKECMDGOALS)),)
stamp_text = $(subst $(RUN),<RUN>,$(strip $(1)))
stamp = $(shell mkdir -p $(RUN)/.stamps && printf '%s\n' '$(call stamp_text,$(2))' | cmp -s - $(RUN)/.stamps/$(1) || \
          printf '%s\n' '$(call stamp_text,$(2))' > $(RUN)/.stamps/$(1))$(RUN)/.stamps/$(1)
else
stamp =
endif

WORLD_CMD = $(PY) world.py generate --out $(WORLD) --tracks $(TRACKS) --users $(USERS) --seed $(SEED)
RVQ_CMD = $(PY) rvq.py train --catalog $(CATALOG) --out $(RUN)/rvq --levels $(LEVELS) --codebook-size $(CODEBOOK) \
	  --seed $(SEED) --signals $(SIGNALS) --logs $(LOGS) $(ID_OPTS) \
	  $(if $(LAST_LEVEL_SIGNALS),--last-level-signals $(LAST_LEVEL_SIGNALS)) $(RVQ_ARGS)
SFT_DATA_CMD = $(PY) data.py sft --catalog $(CATALOG) --rvq $(RUN)/rvq --logs $(LOGS) $(ID_OPTS) --out $(RUN)/sft_data \
	  --attribute-examples $(ATTRIBUTE_EXAMPLES) --grounding-examples $(GROUNDING_EXAMPLES) \
	  --test-next $(TEST_NEXT) --test-attributes $(TEST_ATTRIBUTES) --prompt-history $(HISTORY) \
	  --context-text $(CONTEXT_TEXT) --seed $(SEED)
SFT_CMD = $(LAUNCH) sft.py --data $(RUN)/sft_data --out $(RUN)/sft --model $(MODEL) --steps $(SFT_STEPS) \
	  --batch-size $(SFT_BATCH) --device $(DEVICE) --seed $(SEED) --resume \
	  $(if $(filter-out 1,$(PROMPT_ID_WEIGHT)),--prompt-id-weight $(PROMPT_ID_WEIGHT)) \
	  $(if $(filter-out example,$(SFT_TARGETS)),--answer-targets $(SFT_TARGETS)) $(SFT_ARGS)
PREFS_CMD = $(PY) data.py prefs --sft-data $(RUN)/sft_data --out $(RUN)/prefs --seed $(SEED) \
	  --max-train $(TRAIN_PAIRS) --max-val $(VAL_PAIRS) --max-test $(TEST_PAIRS) $(PREFS_ARGS)
DPO_CMD = $(LAUNCH) dpo.py --pairs $(RUN)/prefs --sft $(RUN)/sft/adapter --out $(RUN)/dpo --model $(MODEL) \
	  --steps $(DPO_STEPS) --batch-size $(DPO_BATCH) --device $(DEVICE) --seed $(SEED) --resume $(SEED_DPO_ARGS) \
	  $(if $(filter-out 1,$(DPO_PAIRS_PER_PROMPT)),--pairs-per-prompt $(DPO_PAIRS_PER_PROMPT) \
	  --micro-batch-size $(DPO_MICRO_BATCH)) $(if $(filter-out accuracy,$(DPO_SELECT)),--select $(DPO_SELECT)) \
	  $(if $(filter-out 0.1,$(DPO_BETA)),--beta $(DPO_BETA)) \
	  $(if $(filter-out 0,$(SFT_REPLAY)),--sft-replay $(SFT_REPLAY) --sft-data $(RUN)/sft_data) $(DPO_ARGS)
SASREC_CMD = $(PY) sasrec.py --sft-data $(RUN)/sft_data --out $(RUN)/sasrec --seed $(SEED) $(SASREC_ARGS)
EVAL_CMD = $(LAUNCH) evaluate.py --run $(RUN) --model $(MODEL) --device $(DEVICE) --seed $(SEED) \
	  --hallucination-prompts $(HALLUCINATION_PROMPTS) $(EVAL_ARGS)

# 1. the synthetic world, written in the real formats (skipped when CATALOG / LOGS are real files)
WORLD_FILES := $(WORLD)/catalog.csv $(WORLD)/userid_trackid_timestamp.tsv $(WORLD)/id_information.csv $(WORLD)/id_metadata.csv
$(WORLD)/world_config.json: $(call stamp,world,$(WORLD_CMD)) | $(VENV_STAMP)
	$(WORLD_CMD)
	touch -c -r $@ $(WORLD_FILES)   # written before world_config.json: give them its time, or make -n sees them stale
$(WORLD_FILES): $(WORLD)/world_config.json ;

# 2. Semantic IDs
$(RUN)/rvq/rvq_config.json: $(CATALOG) $(LOGS) $(call stamp,rvq,$(RVQ_CMD)) | $(VENV_STAMP)
	$(RVQ_CMD)

# 3. SFT examples and test sets
$(RUN)/sft_data/config.json: $(RUN)/rvq/rvq_config.json $(LOGS) $(call stamp,sft_data,$(SFT_DATA_CMD)) | $(VENV_STAMP)
	$(SFT_DATA_CMD)

# the answers of the attribute requests, which group targets read: a folder of an older data.py lacks them
$(RUN)/sft_data/attribute_answers.jsonl: | $(RUN)/sft_data/config.json
	$(SFT_DATA_CMD)

# 4. SFT (resumes from its checkpoint if killed)
$(RUN)/sft/summary.json: $(RUN)/sft_data/config.json $(MODEL)/config.json $(call stamp,sft,$(SFT_CMD)) \
                         $(if $(filter-out example,$(SFT_TARGETS)),$(RUN)/sft_data/attribute_answers.jsonl)
	$(SFT_CMD)

# 5. preference pairs
$(RUN)/prefs/config.json: $(RUN)/sft_data/config.json $(call stamp,prefs,$(PREFS_CMD))
	$(PREFS_CMD)

# 6. DPO from the SFT adapter
$(RUN)/dpo/summary.json: $(RUN)/prefs/config.json $(RUN)/sft/summary.json $(call stamp,dpo,$(DPO_CMD))
	$(DPO_CMD)

# 7. the SASRec baseline, trained on the training window's sessions (2 minutes at most, early-stopped)
$(RUN)/sasrec/summary.json: $(RUN)/sft_data/config.json $(call stamp,sasrec,$(SASREC_CMD))
	$(SASREC_CMD)

# 8. evaluation: report.md, results.json, plots
$(RUN)/eval/report.md: $(RUN)/dpo/summary.json $(RUN)/sft/summary.json $(RUN)/sasrec/summary.json \
                       $(RUN)/prefs/config.json $(call stamp,eval,$(EVAL_CMD))
	$(EVAL_CMD)

test: $(VENV)/.peers
	$(PY) -m pytest -q tests

# benchmarks run serially (2 cores: anything running beside them distorts the figures), on the run's artifacts
bench: $(VENV)/.peers $(RUN)/dpo/summary.json
	$(PY) benchmarks/bench_rvq.py
	$(PY) benchmarks/bench_sft.py --run $(RUN)
	$(PY) benchmarks/bench_dpo.py --run $(RUN)
	$(PY) benchmarks/bench_beam.py --run $(RUN)
	$(PY) benchmarks/bench_prefs.py --run $(RUN)
	$(PY) benchmarks/bench_llama1b.py --run $(RUN)
	$(PY) benchmarks/bench_exact.py --run $(RUN)
	$(PY) benchmarks/bench_ddp.py --run $(RUN)
	$(PY) benchmarks/bench_cpu.py --run $(RUN)
	$(PY) benchmarks/bench_mining.py
	$(PY) benchmarks/bench_ranker.py
	$(PY) benchmarks/bench_choice.py --run $(RUN)

# the ablation table (README): today's demo and one change at a time on the same world, about 20 minutes a row on 2
# cores; SEED=1 builds another world's table in runs/ablation-seed1. ABLATION_ROWS=all adds the demo's history
# (ablation.py --help lists the rows; empty: ablation.TODAY)
ABLATION_ROWS ?=
ablation: $(VENV_STAMP) $(MODEL)/config.json
	$(PY) ablation.py --out runs/ablation$(if $(filter-out 0,$(SEED)),-seed$(SEED)) --seed $(SEED) \
	    $(if $(ABLATION_ROWS),--rows $(ABLATION_ROWS))

clean-run:
	rm -rf $(RUN)
