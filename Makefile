# The commands a newcomer types: `make demo` and `make test`. Each sets itself up first.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.setup-done
# Keep tools from writing into the home directory, and stop surprise downloads.
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
export YOLO_CONFIG_DIR ?= $(CURDIR)/.cache/ultralytics
export YOLO_OFFLINE = 1
export YOLO_AUTOINSTALL = 0
export HF_HUB_OFFLINE = 1

.PHONY: setup demo test train train-vehicle train-speech labels labels-restore bench bench-filters clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) scripts/setup.sh
	touch $@

# The main job: vehicle counting on the sample clip, printing what the filter saved.
# Pass SOURCE=path/url/cam0 for your own media, FILTER=cascade|none|stride:N|..., LINE=x1,y1,x2,y2.
demo: setup
	@$(PY) apps/demo.py $(if $(SOURCE),--source "$(SOURCE)") $(if $(FILTER),--filter "$(FILTER)") \
		$(if $(LINE),--line "$(LINE)")

# pytest exits 5 when it collects no tests: that is a failure here, not a pass.
test: setup
	@$(PY) -m pytest -q -ra; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$status

# The shipped filters, from nothing but the shared assets (and Debian's espeak-ng for speech):
# `make train` = train-vehicle + train-speech, each rewriting its filter directories, each
# calibration following its training.
# Labels are what YOLO and Whisper answer on every frame and window, made by the project's own
# label commands and committed in data/labels (gzip; data/README.md): `make labels-restore`
# copies them into the label caches, where the label commands find them by the clip's content
# hash and the detector's or recognizer's settings, so make train runs no detector or
# recognizer unless a clip or a setting changed (that clip is then labelled anew). `make labels`
# remakes them all from scratch (~60 min on 2 cores: YOLO ~25 min, Whisper tiny.en ~30 min,
# whose temperature fallback spends seconds on a noisy window) and writes them back to data/labels.
# Timed in one run from a fresh clone (docs/filters.md): 26 min on 2 cores with the test suite
# running beside it.
# Vehicles (models/shipped/vehicle), 14 min: Skip and Reuse train on the first half of each clip
# (~4 and ~3 min; the first run also decodes the clips into the frame cache), thresholds
# calibrated on the validation frames (~7 min).
# Speech (models/shipped/speech), 11 min: the seed-0 mixtures are built, the early-exit network
# (~5 min) and the audio Skip (~3.5 min) train on the train split, are calibrated on val, and the
# speech bench picks the cascade per target from the val results (cascade.json; it also scores
# test and times the filters beside Whisper).
ASSETS  ?= $(or $(INFI_ASSETS),../shared/assets)
CLIPS   ?= $(sort $(wildcard $(ASSETS)/traffic/*.mp4 $(ASSETS)/traffic/*.avi $(ASSETS)/traffic/*.webm))
SHIPPED := models/shipped/vehicle
SPEECH  := models/shipped/speech
CACHE   ?= $(or $(INFI_CACHE),.cache)
LABELS  := data/labels

train: train-vehicle train-speech

train-vehicle: setup labels-restore
	@test -n "$(CLIPS)" || { echo "make train: no clips under $(ASSETS)/traffic (set INFI_ASSETS)" >&2; exit 1; }
	$(VENV)/bin/infistream filter label --jobs 2 --no-progress --source $(CLIPS)
	$(VENV)/bin/infistream filter train skip --clips $(CLIPS) --out $(SHIPPED)/skip
	$(VENV)/bin/infistream filter train reuse --clips $(CLIPS) --out $(SHIPPED)/reuse
	$(VENV)/bin/infistream filter calibrate $(SHIPPED)

train-speech: setup labels-restore
	$(VENV)/bin/infistream filter mixtures --seed 0 --label --jobs 2
	$(VENV)/bin/infistream filter train early-exit --task speech --epochs 30 --exit-stem 16 \
		--exit-filters 32 64 128 256 --exit-threads 1 --seed 0 --out $(SPEECH)/early-exit --no-progress
	$(VENV)/bin/infistream filter train skip --task speech --seed 0 --out $(SPEECH)/skip --no-progress
	$(VENV)/bin/infistream filter calibrate --task speech early-exit audio-skip
	$(PY) apps/bench_filters.py --task speech --ship $(SPEECH)/cascade.json

# Copy the committed labels into the caches (a file already there is kept).
labels-restore:
	@scripts/labels.sh restore "$(LABELS)" "$(CACHE)"

# Label everything anew (no cache, no committed labels) and commit-ready copies to data/labels.
labels: setup
	@test -n "$(CLIPS)" || { echo "make labels: no clips under $(ASSETS)/traffic (set INFI_ASSETS)" >&2; exit 1; }
	rm -rf "$(CACHE)/labels.new" "$(CACHE)/speech-labels.new"
	$(VENV)/bin/infistream filter label --jobs 2 --no-progress --out "$(CACHE)/labels.new" --source $(CLIPS)
	$(VENV)/bin/infistream filter mixtures --seed 0 --label --jobs 2 --labels "$(CACHE)/speech-labels.new"
	scripts/labels.sh save "$(CACHE)/labels.new" "$(CACHE)/speech-labels.new" "$(LABELS)"

# The filters against the baselines on every clip's test half (curves, tables: bench/results/filters*).
bench-filters: setup labels-restore
	$(PY) apps/bench_filters.py --json bench/results/filters.json

bench: setup
	$(PY) apps/bench_transport.py --json bench/results/transport.json
	$(PY) apps/bench_consumers.py --json bench/results/consumers.json

clean:
	rm -rf $(VENV) .cache .pytest_cache
