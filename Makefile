# The two commands of the README: `make demo` (main job on the embedded default model) and `make test`.
# Both preload jemalloc where the system has it (scripts/jemalloc.sh: XLA's CPU buffers without page faults).
.PHONY: setup demo test test-fast clean-cache

setup:
	@bash scripts/bootstrap.sh

demo: setup
	. scripts/jemalloc.sh && .venv/bin/mend-jax demo

test: setup
	. scripts/jemalloc.sh && .venv/bin/python -m pytest -q tests

test-fast: setup
	. scripts/jemalloc.sh && .venv/bin/python -m pytest -q -m "not smollm2 and not slow" tests

clean-cache:
	rm -rf $${MEND_JAX_CACHE:-$$HOME/.cache/mend_jax}
