"""make dataset (`python -m dataset`): `make infer` and `make compare` over COUNT generated inputs, measured.

Above run/ and compare/ in the layer order (.importlinter): it runs both stages as processes and reads their results.
"""
