"""Editing: gradient factors (``factors``), editor networks (``editor``), turning them into weight changes
(``edit``), tokenised batches (``batch``), losses/metrics (``losses``) and the projection of pseudo-inputs off
unrelated inputs' directions and their whitening (``projection``, optional edit transformations)."""
from mend_jax.editing.batch import TokenBatch, edit_row_bucket, encode_examples, stack_batches, tokenize_pair
from mend_jax.editing.edit import (apply_edits, compute_edits, edited_kernels, iterated_mend_edits, mend_edits,
                                   merge_edits, with_kernels)
from mend_jax.editing.editor import (Editor, EditorConfig, EditorSpec, custom_editor, identity_editor, mend_editor,
                                     normalize, stats_initialised, step_sizes)
from mend_jax.editing.factors import Factors, capture_factors
from mend_jax.editing.losses import kl_pre_post, masked_nll, token_accuracy
from mend_jax.editing.projection import (input_second_moments, map_pseudo_inputs, project_inputs, projection_bases,
                                         whiten_inputs, whitening_maps)

__all__ = ["Editor", "EditorConfig", "EditorSpec", "Factors", "TokenBatch", "apply_edits", "capture_factors",
           "compute_edits", "custom_editor", "edit_row_bucket", "edited_kernels", "encode_examples", "identity_editor", "input_second_moments", "iterated_mend_edits", "kl_pre_post", "map_pseudo_inputs",
           "masked_nll", "mend_edits", "mend_editor", "merge_edits", "normalize", "project_inputs", "projection_bases",
           "stack_batches", "stats_initialised", "step_sizes", "token_accuracy", "tokenize_pair", "whiten_inputs",
           "whitening_maps", "with_kernels"]
