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

.PHONY: setup demo test train bench bench-filters clean

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

# The shipped filters (models/shipped/vehicle), from nothing but the shared clips, in under an hour
# on 2 cores: YOLO labels every clip (~20 min, cached in .cache/labels by clip and detector), Skip
# and Reuse train on the first half of each clip (~5 min), and the thresholds are calibrated on the
# validation frames (~5 min). Training rewrites the filter directories; calibration must follow.
ASSETS  ?= $(or $(INFI_ASSETS),../shared/assets)
CLIPS   ?= $(sort $(wildcard $(ASSETS)/traffic/*.mp4 $(ASSETS)/traffic/*.avi $(ASSETS)/traffic/*.webm))
SHIPPED := models/shipped/vehicle
train: setup
	@test -n "$(CLIPS)" || { echo "make train: no clips under $(ASSETS)/traffic (set INFI_ASSETS)" >&2; exit 1; }
	$(VENV)/bin/infistream filter label --jobs 2 --no-progress --source $(CLIPS)
	$(VENV)/bin/infistream filter train skip --clips $(CLIPS) --out $(SHIPPED)/skip
	$(VENV)/bin/infistream filter train reuse --clips $(CLIPS) --out $(SHIPPED)/reuse
	$(VENV)/bin/infistream filter calibrate $(SHIPPED)

# The filters against the baselines on every clip's test half (curves, tables: bench/results/filters*).
bench-filters: setup
	$(PY) apps/bench_filters.py --json bench/results/filters.json

bench: setup
	$(PY) apps/bench_transport.py --json bench/results/transport.json
	$(PY) apps/bench_consumers.py --json bench/results/consumers.json

clean:
	rm -rf $(VENV) .cache .pytest_cache
