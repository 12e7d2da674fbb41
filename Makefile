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

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) scripts/setup.sh
	touch $@

# The main job: vehicle counting on the sample clip, printing what the filter saved.
# Pass SOURCE=path/url/cam0 for your own media, FILTER=none|stride:N, LINE=x1,y1,x2,y2.
demo: setup
	@$(PY) apps/demo.py $(if $(SOURCE),--source "$(SOURCE)") $(if $(FILTER),--filter "$(FILTER)") \
		$(if $(LINE),--line "$(LINE)")

# pytest exits 5 when it collects no tests: that is a failure here, not a pass.
test: setup
	@$(PY) -m pytest -q -ra; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$status

bench: setup
	$(PY) apps/bench_transport.py --json bench/results/transport.json
	$(PY) apps/bench_consumers.py --json bench/results/consumers.json

clean:
	rm -rf $(VENV) .cache .pytest_cache
