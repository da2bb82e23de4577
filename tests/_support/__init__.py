"""Plain helpers shared by the test modules, importable as `tests._support.<concern>` (as Optuna keeps its shared
test code in `optuna/testing/`); pytest fixtures stay in the `conftest.py` files and call these."""
