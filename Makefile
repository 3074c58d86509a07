# Ascend offline-inference pipeline: export -> om -> infer -> compare -> bench, one config per model.
# `make help` lists targets and variables.

SHELL := /bin/bash
.DEFAULT_GOAL := help
.SECONDARY:
.SECONDEXPANSION:

DEFAULTS  := $(filter-out zoo,$(sort $(basename $(notdir $(wildcard configs/*.yaml)))))
MODEL     ?= $(DEFAULTS)
BACKEND   ?= auto
WEIGHTS   ?=
INPUT     ?=
DEVICE    ?= 0
SOC       ?=
COUNT     ?= 1000
ENV       ?= full
ENGINE    ?= local
WORKERS   ?=
FAIL_ON_BAD ?=
PRECISION_SAMPLES ?= 2
VENV      ?= .venv
PY        := $(VENV)/bin/python
B         := $(or $(PIPELINE_BUILD_DIR),build)
ZOO       ?=
ZOO_LIST  ?= configs/zoo.yaml
# generated configs (build/configs/: `make zoo` writes them there) run by name like the others
ZOO_CFG   := $(B)/configs
CONFIGS   := $(sort $(DEFAULTS) $(basename $(notdir $(wildcard configs/more/*.yaml $(ZOO_CFG)/*.yaml))))
HEAVY     ?=
export WEIGHTS INPUT DEVICE SOC BACKEND ENGINE WORKERS FAIL_ON_BAD SOAK HEAVY

ifneq ($(filter-out $(CONFIGS),$(MODEL)),)
$(error unknown MODEL '$(filter-out $(CONFIGS),$(MODEL))'; available models: $(CONFIGS))
endif
BACKENDS  := $(shell python3 -m convert.backends names)
ifeq ($(filter $(BACKEND),$(BACKENDS)),)
$(error unknown BACKEND '$(BACKEND)'; use one of: $(BACKENDS))
endif
ifeq ($(filter $(ENGINE),local ray),)
$(error unknown ENGINE '$(ENGINE)'; use local (default) or ray)
endif
ifneq ($(filter $(ENV),full host),$(ENV))
$(error unknown ENV '$(ENV)'; use full (workstation, with torch) or host (Ascend host, no torch))
endif

ENV_STAMP := $(VENV)/.installed-$(ENV)$(if $(and $(filter host,$(ENV)),$(filter ray,$(ENGINE))),-ray,)
PIPE_SRC  := $(wildcard pipeline/*.py)
cfgfile    = $(firstword $(wildcard configs/$(1).yaml configs/more/$(1).yaml $(ZOO_CFG)/$(1).yaml))
family     = $(shell sed -n 's/^family: *//p' $(call cfgfile,$(1)))
FAMILY_SRC = $(wildcard models/$(call family,$(1))/*.py models/$(call family,$(1))/*.txt)

.PHONY: help env all check test clean distclean evidence classifier-study vad-oracle fp16-study om-double FORCE

# stage files are named by the BACKEND asked for; the plan stamp reruns them when its meaning changes here
BK := $(BACKEND)
# HEAVY=1: make bench runs the config's bench.heavy set too (long clips, big sizes); its own done-file
HV := $(if $(filter 1,$(HEAVY)),-heavy,)
# the stage rules come from the one stage list, pipeline/stages.py (system python3: no environment needed)
STAGES_MK := $(B)/stages.mk
$(STAGES_MK): pipeline/stages.py
	@mkdir -p $(@D) && python3 -m pipeline.stages makefile > $@.tmp && mv $@.tmp $@
include $(STAGES_MK)

help:
	@echo "Ascend offline-inference pipeline"
	@echo "  make all        export, om, infer, compare, bench for MODEL (default: every model in configs/)"
	@echo "  make test       run the test suite (creates/updates the environment first)"
	@echo "  make check      the fast subset for the edit loop (no make-driven end-to-end tests)"
	@python3 -m pipeline.stages help
	@echo "  make evidence   every model, doctor, preflight, precision, dataset runs (ENGINE=ray), zoo, report: results/ and logs/"
	@echo "  make fp16-study the doctor's cheapest fp16 fixes for the zoo's fp16 misses, priced as fp32 share (cube apart)"
	@echo "  make vad-oracle silero-vad: our fp32 path against the wheel's own ONNX (probabilities, segments)"
	@echo "  make classifier-study   the real MobileNetV2 over 200 photo variants: fp16 logits distribution, task gates, labelled accuracy"
	@echo "  make clean      remove build/ (ONNX, .om, .npy); results/ and logs/ stay"
	@echo "Variables: MODEL=<one or more of: $(CONFIGS)> (default: $(DEFAULTS))"
	@echo "           BACKEND=<$(BACKENDS)> (make doctor says what auto does on this machine)"
	@echo "           WEIGHTS=<file or folder> INPUT=<file or folder> DEVICE=<npu id> SOC=<soc_version>"
	@echo "           COUNT=<inputs for make dataset, default 1000> PRECISION_SAMPLES=<saved inputs make precision uses, default 2>"
	@echo "           HEAVY=1 (make bench: also the config's bench.heavy set; make evidence sets it)"
	@echo "           ENV=<full|host> (host: no torch, for an Ascend host)"
	@echo "           ENGINE=<local|ray> WORKERS=<actors> RAY_ADDRESS=<head:port> FAIL_ON_BAD=1 (infer, compare, dataset)"
	@echo "           ZOO=<zoo entries, timm names, torchvision:<name> or timm:<name>> ZOO_LIST=<yaml, default configs/zoo.yaml> (make zoo)"

# ---- environment -------------------------------------------------------------------------------
env: $(ENV_STAMP)

$(VENV)/.installed-full: requirements.txt requirements-host.txt requirements-torch.txt requirements-ray.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-torch.txt
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

$(VENV)/.installed-host: requirements-host.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-host.txt
	@touch $@

$(VENV)/.installed-host-ray: $(VENV)/.installed-host requirements-ray.txt
	$(PY) -m pip install -q -r requirements-ray.txt
	@touch $@

# ---- stages (real file targets; stamps change only when their inputs change) ---------------------
$(B)/%/weights.stamp: FORCE | $(ENV_STAMP)
	@$(PY) -m pipeline.stamp weights --model $*
$(B)/%/input.stamp: FORCE | $(ENV_STAMP)
	@$(PY) -m pipeline.stamp input --model $*
# what BACKEND means on this machine (convert/backends/): changes when ATC, SOC, an NPU, ais_bench or a provider come or go
$(B)/%/plan-$(BACKEND).stamp: FORCE | $(ENV_STAMP)
	@$(PY) -m convert.backends stamp --model $* --backend $(BACKEND)

# per-stage slices of the config: editing compare.gate reruns compare only
$(B)/%/cfg.stamp: $$(call cfgfile,$$*) $(PIPE_SRC) | $(ENV_STAMP)
	@$(PY) -m pipeline.stamp config --model $*
	@touch $@
$(foreach s,$(SLICE_STAGES),$(B)/%/cfg/$(s).json): $(B)/%/cfg.stamp ;


all:     compare bench

# ---- evidence: one run that writes results/ and logs/ (run it in a clean clone) ----------------------------
MORE_EVIDENCE := crepe_full resnet50_a1_in1k efficientnet_b0_ra_in1k mobilenetv3_large_100_ra_in1k \
                 vit_small_patch16_224_augreg_in21k_ft_in1k swin_tiny_patch4_window7_224_ms_in1k \
                 mobilenet_v2_imagenet1k resnet18_tv_standin ppocr_cls_mobile_v2 magika_standard_v3_3 silero_vad_16k
# the code before issue 22: the "before" of the Ray and host figures
EVIDENCE_BEFORE ?= 516b455
EVIDENCE_DATASETS ?= cnn8rnn_audioset_sed:1000:10000 convnext_base_clip_laion2b:200:0
evidence: | $(ENV_STAMP)
	$(MAKE) all MODEL="$(DEFAULTS)" HEAVY=1
	$(MAKE) all MODEL=crepe_full HEAVY=1
	@for d in $(EVIDENCE_DATASETS); do IFS=: read m c s <<< "$$d"; \
	  $(MAKE) dataset MODEL=$$m COUNT=$$c SOAK=$$s ENGINE=ray || exit 1; done
	$(MAKE) all MODEL="$(filter-out crepe_full,$(MORE_EVIDENCE))" HEAVY=1
	$(MAKE) classifier-study
	$(MAKE) vad-oracle
	$(MAKE) fp16-study
	$(MAKE) om-double
	git worktree add -f $(B)/before $(EVIDENCE_BEFORE)
	$(MAKE) ray-overhead MODEL=cnn8rnn_audioset_sed BEFORE=$(B)/before
	$(MAKE) host-before-after MODEL="cnn8rnn_audioset_sed mobilenet_v2_imagenet1k convnext_base_clip_laion2b" BEFORE=$(B)/before
	$(MAKE) projection MODEL=cnn8rnn_audioset_sed
	$(MAKE) doctor preflight precision MODEL="$(DEFAULTS)"
	$(MAKE) zoo
	$(MAKE) report PUBLISH=1 MODEL="$(DEFAULTS) $(MORE_EVIDENCE)"

# the real MobileNetV2 over 200 natural-looking images (the CC0 photos and seeded variants of them): the fp16
# logits error distribution and the task gates (make compare), and top-1/top-5 against their labels (make accuracy)
STUDY_MODEL := mobilenet_v2_imagenet1k
STUDY_DIR   := $(B)/photo_variants
# ENGINE=ray measured here (docs/scale-out.md): Ray against local back to back (results/<model>/ray_overhead.json);
# host work per file and its spread over Ray actors, then the H hosts x N NPUs table (results/<model>/projection.md)
.PHONY: ray-overhead projection host-before-after
ray-overhead: | $(ENV_STAMP)
	@for m in $(MODEL); do $(PY) -m dataset.ray_overhead --model $$m --backend $(BACKEND) \
	  $(if $(BEFORE),--before $(BEFORE)) || exit 1; done
# this checkout's host pipeline against BEFORE's (a git worktree), same files, back to back, outputs replayed
# (host-only; results/<model>/host_before_after.json)
host-before-after: | $(ENV_STAMP)
	@for m in $(MODEL); do $(PY) -m dataset.host_before_after --model $$m --before $(BEFORE) || exit 1; done
projection: | $(ENV_STAMP)
	@for m in $(MODEL); do $(PY) -m dataset.host_ray --model $$m --backend $(BACKEND) && \
	  $(PY) -m dataset.projection --model $$m $(if $(NPU_RATE),--npu-rate $(NPU_RATE)) || exit 1; done

classifier-study: | $(ENV_STAMP)
	$(PY) -m modality.photo_variants tests/data/photos $(STUDY_DIR) 200 0
	$(MAKE) infer compare MODEL=$(STUDY_MODEL) INPUT=$(STUDY_DIR)
	$(MAKE) accuracy MODEL=$(STUDY_MODEL) INPUT=$(STUDY_DIR)/labels.csv

# silero-vad: our fp32 path (exported ONNX, carried state) against the wheel's own silero_vad.onnx on the speech,
# silence and noise files: probabilities within 1e-4 and the same segments (results/silero_vad_16k/oracle.json)
VAD_MODEL := silero_vad_16k
vad-oracle: $(B)/$(VAD_MODEL)/model.sim.onnx | $(ENV_STAMP)
	$(PY) -m models.silero_vad.oracle --model $(VAD_MODEL)

# the precision doctor on the zoo's six fp16 misses (strict tensor gate) and the real MobileNetV2: the cheapest
# passing fix per model, its fp32 share (cube apart) and the SoC families that compile it, against the 99-100 %
# fixes of e02dd5f; each fix proven by make om + compare (results/zoo/fp16_fixes.{json,md}; SOC= narrows it)
fp16-study: | $(ENV_STAMP)
	$(PY) -m zoo.fp16_study $(if $(SOC),--soc $(SOC))

# the .om path of the real-weights MobileNetV2 against the ATC and ais_bench TEST DOUBLES (no NPU here), with and
# without AIPP and fp16 I/O: make om, infer, compare, bench; compare's error is what AIPP and the I/O rounding alone
# cost, and the bytes per image each way (results/om_double/summary.{json,md})
om-double: | $(ENV_STAMP)
	$(PY) tests/om_double_run.py

# ---- tests ----------------------------------------------------------------------------------------
test: $(VENV)/.installed-full
	$(PY) -m pytest -q tests

# the edit loop: everything but the make-driven end-to-end tests (marker e2e, pytest.ini)
check: $(VENV)/.installed-full
	$(PY) -m pytest -q -m "not e2e" tests

clean:
	rm -rf $(B)

distclean: clean
	rm -rf $(VENV)

FORCE:
