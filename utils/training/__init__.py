"""The training runtime behind train.py: device and mixed precision, seeds and RNG state, the
learning-rate schedule, EMA, non-finite guards, firing rates, resumable checkpoints, several
processes (torchrun) and stop signals."""
