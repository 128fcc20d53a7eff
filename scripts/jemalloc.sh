# Sourced by the Makefile's commands and the training / evaluation scripts: preload jemalloc when the system has it
# (Debian/Ubuntu: `apt install libjemalloc2`) and nothing else is preloaded. Why: XLA's CPU runtime allocates its
# large per-step buffers (logits of 49,152-token vocabularies, activations) with malloc; glibc serves any block over
# 32 MiB with a fresh mmap and returns it on free, so every training step page-faults its buffers in again (on the
# 2-core development machine ~60,000 page faults a second, sampled during training). jemalloc at its defaults
# purges blocks over 8 MiB at once too, hence MALLOC_CONF (unless set): no separate arena for large blocks, freed
# pages kept for reuse (the process keeps its peak memory). benchmarks/bench_allocator.py measures the three side by
# side. Without the library, nothing changes. MEND_JAX_NO_JEMALLOC=1 turns it off; MEND_JAX_JEMALLOC=PATH names a
# library elsewhere.
if [ -z "${LD_PRELOAD:-}" ] && [ -z "${MEND_JAX_NO_JEMALLOC:-}" ]; then
  for _lib in ${MEND_JAX_JEMALLOC:-} /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 \
              /usr/lib64/libjemalloc.so.2 /usr/lib/libjemalloc.so.2 /usr/local/lib/libjemalloc.so.2; do
    if [ -e "$_lib" ]; then
      export LD_PRELOAD="$_lib"
      export MALLOC_CONF="${MALLOC_CONF:-oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1}"
      break
    fi
  done
  unset _lib
fi
