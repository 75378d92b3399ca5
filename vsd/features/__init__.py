"""Target-feature cache: fused EAGLE-3 features and final hidden states of every training sequence."""
