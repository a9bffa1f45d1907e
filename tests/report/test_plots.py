"""The drop-vs-cost panel's axes and title: values from 0, a title naming what actually varies."""

from __future__ import annotations

from matplotlib.figure import Figure

from esft.report.plots import _from_zero, _varying


def test_value_axes_start_at_zero_unless_a_value_is_negative() -> None:
    ax = Figure().subplots()
    _from_zero(ax, [58.2, 65.5])  # a 7-point gap must not fill the panel
    low, high = ax.get_ylim()
    assert low == 0 and 65.5 < high < 72
    _from_zero(ax, [-5.0, 10.0])
    assert ax.get_ylim()[0] < -5.0


def test_title_names_the_keys_that_vary() -> None:
    assert _varying({"group_keys": ["awd.lambda"], "groups": [{}, {}]}) == "groups differ in awd.lambda"
    assert _varying({"group_keys": [], "groups": [{}]}) == "one group"
