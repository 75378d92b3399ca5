"""Training data: prompt sources, self-distillation by the target, the draft vocab, the data stage."""
