"""Hyperparameter sweeps (Optuna) and seed repeats: `python -m mnist_lightning sweep|seeds`. Each trial and each
seed is an ordinary `fit` run."""
