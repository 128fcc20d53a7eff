"""Meta-training of editors: the jitted step (``step``), batches of meta-examples (``batches``), the loop with
validation, early stopping, checkpoints and logs (``loop``), and the configuration (``config``).
Hyperparameter choices and their evidence: ``training/TRAINING_NOTES.md``."""
