r"""How a trial's configuration reads in MLflow: plain values people filter and group by (`params.\`se.excitation\`
= 'tanh'`, `groupby("params.se.excitation")`), given back exactly, and only the options the network has."""

from __future__ import annotations

import json
from typing import Any


def param_text(value: Any) -> str:
    """A param or factor tag as MLflow users filter and group by it: `tanh`, `4`, `[2, 3]`, `false`, `null`. A
    string that would read back as something else (`"4"`, `"true"`, the empty string) keeps its JSON quotes, so
    `read_param` gives every value back exactly."""
    if isinstance(value, str) and value:
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value)


def read_param(text: str) -> Any:
    """A param's value: what `param_text` wrote, or the JSON of runs logged before plain values (`"tanh"`)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def logged_params(flat: dict[str, Any]) -> dict[str, Any]:
    """The flattened config MLflow gets: a network without SE logs `se.enabled=false` and no other SE option (its
    identity has none, and a stray `se.excitation=sigmoid` would plot and group it with the sigmoid runs)."""
    if flat.get("se.enabled", True) is not False:
        return dict(flat)
    return {k: v for k, v in flat.items() if not k.startswith("se.") or k == "se.enabled"}
