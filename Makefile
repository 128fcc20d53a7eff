# The two commands of the README: `make demo` (main job on the embedded default model) and `make test`.
.PHONY: setup demo test test-fast clean-cache

setup:
	@bash scripts/bootstrap.sh

demo: setup
	.venv/bin/mend-jax demo

test: setup
	.venv/bin/python -m pytest -q tests

test-fast: setup
	.venv/bin/python -m pytest -q -m "not smollm2 and not slow" tests

clean-cache:
	rm -rf $${MEND_JAX_CACHE:-$$HOME/.cache/mend_jax}
