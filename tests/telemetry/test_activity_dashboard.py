"""The Grafana dashboard in docs/ asks only for series that /metrics serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

from llamaman.telemetry import metrics

ROOT = Path(__file__).resolve().parents[2]
_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def test_every_series_in_the_dashboard_is_one_metrics_serves() -> None:
    declared = set(re.findall(r'"(llamaman_[a-z_]+)"', Path(metrics.__file__).read_text()))
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["definition"])
    used = {name for e in exprs for name in re.findall(r"llamaman_[a-z_]+", e)}
    assert used, "the dashboard queries nothing"

    def served(name: str) -> bool:
        return name in declared or any(
            name.removesuffix(s) in declared for s in _SUFFIXES if name.endswith(s)
        )

    assert sorted(n for n in used if not served(n)) == []
    # Counters are exposed with _total: a query without it would find nothing.
    assert "llamaman_requests_total" in used and "llamaman_requests" not in used
