# kb: every target is a one-liner over the kb CLI or pytest. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.DEFAULT_GOAL := help
SHARED_EVAL := $(patsubst %/corpus.jsonl,%,$(wildcard ../shared/eval/*/corpus.jsonl))
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
.PHONY: help install seed serve serve-cluster test test-ui lint format eval calibrate bench bench-full reset-db clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install kb with its pinned dependencies (CPU torch)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0 -e '.[dev,openvino]'
	touch $(STAMP)

seed: install ## Load data/seed into the default store (loading twice changes nothing)
	$(BIN)/kb load data/seed

serve: seed ## Serve the API on the default store (KB_HOST, KB_PORT, KB_CHROMA_PATH)
	$(BIN)/kb serve

serve-cluster: install ## A local Chroma server (chroma_server_db/) and kb with several workers on it
	$(BIN)/kb cluster --path chroma_server_db --seed data/seed

test: install ## Run the test suite (API tests on an embedded store and on a Chroma server)
	$(BIN)/python -m pytest -m "not ui"

test-ui: install ## Browser tests of the search page (installs Debian's chromium if missing)
	@test -x $(CHROMIUM) || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)
	$(BIN)/python -m pytest -m ui

eval: install ## Retrieval figures on data/eval and every dataset in ../shared/eval (minutes)
	$(BIN)/kb eval data/eval $(SHARED_EVAL) --mode dense --mode keyword --mode hybrid --fusion rrf --fusion score

calibrate: install ## Threshold sweep on data/eval's labeled pairs and queries
	$(BIN)/kb calibrate --pairs data/eval/pairs.jsonl --queries data/eval

lint: install ## Check style with ruff and kb's type hints with mypy
	$(BIN)/ruff check kb tests bench && $(BIN)/ruff format --check kb tests bench && $(BIN)/mypy

format: install ## Format the code with ruff
	$(BIN)/ruff format kb tests bench && $(BIN)/ruff check --fix kb tests bench

bench: install ## Ingest, query and start-up benchmarks vs a tutorial baseline (FULL=1 adds 100k)
	$(BIN)/python -m bench $(if $(FULL),--full) $(BENCH_ARGS)

bench-full: install ## make bench with the 100k-document cells (long: builds a 100k store)
	$(BIN)/python -m bench --full $(BENCH_ARGS)

# The path is read by the shell, quoted: make would split it at spaces (and find, given none,
# searches "."). Only a folder holding a kb store (chroma.sqlite3) and no kb process is emptied.
# A leading ~ or ~user is expanded and a symlinked folder followed (find -H), as kb reads it.
reset-db: ## Delete the store at KB_CHROMA_PATH, chroma_db by default (needs FORCE=1)
	@store="$${KB_CHROMA_PATH-chroma_db}"; \
	if [ -z "$${store//[[:space:]]/}" ]; then echo "KB_CHROMA_PATH is empty: nothing deleted"; exit 1; fi; \
	case "$$store" in \
		"~" | "~/"*) store="$${HOME-$$(getent passwd "$$(id -un)" | cut -d: -f6)}$${store#"~"}";; \
		"~"*) user="$${store%%/*}"; user="$${user#"~"}"; \
			home="$$(getent passwd -- "$$user" | cut -d: -f6)"; \
			if [ -n "$$home" ]; then store="$$home$${store#"~$$user"}"; fi;; \
	esac; \
	if [ "$(FORCE)" != "1" ]; then echo "refusing to delete '$$store': run 'make reset-db FORCE=1'"; exit 1; fi; \
	if [ ! -d "$$store" ]; then echo "'$$store' is not a folder: nothing to delete"; exit 0; fi; \
	if [ -z "$$(find -H "$$store" -mindepth 1 -maxdepth 1 ! -name .gitkeep -print -quit)" ]; then \
		echo "'$$store' is empty already"; exit 0; fi; \
	if [ ! -f "$$store/chroma.sqlite3" ]; then \
		echo "refusing: '$$store' holds no chroma.sqlite3, so it is not a kb store"; exit 1; fi; \
	if [ -e "$$store/.kb.lock" ] && ! flock -n "$$store/.kb.lock" true; then \
		echo "refusing: a kb process has '$$store' open (stop kb serve or kb cluster first)"; exit 1; fi; \
	find -H "$$store" -mindepth 1 -maxdepth 1 ! -name .gitkeep -exec rm -rf {} +; \
	echo "emptied '$$store'"

clean: ## Remove the virtualenv and caches (keeps the store)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
