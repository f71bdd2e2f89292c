"""Checkpoints as data: read weights-only, written all or nothing, their saved parts checked before anything
is built from them. Below the models and the data: it knows neither."""
