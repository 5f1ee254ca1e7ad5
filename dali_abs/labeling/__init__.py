"""Patch labelling in the browser (``dali-abs label``): a local web page over a JSON API,
with the segmenter's predictions as a starting point and a retrain action.

:mod:`.session` holds the state and writes every change to the labels file at once;
:mod:`.server` is the HTTP layer (stdlib only); :mod:`.cli` the subcommand.
"""
