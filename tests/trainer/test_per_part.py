"""The per-part vocabulary every layer shares (trainer, study axes, selection, analysis)."""

from __future__ import annotations

import math

import pytest

from trainer import TrainConfig, per_part


def test_one_value_is_every_part_and_other_lengths_are_refused() -> None:
    assert per_part.expand(0.1) == per_part.expand([0.1]) == (0.1, 0.1, 0.1)
    assert per_part.expand((0.3, 0.1, 0.01)) == (0.3, 0.1, 0.01)
    with pytest.raises(ValueError, match="1 or 3 values"):
        per_part.expand([0.1, 0.2])
    cfg = TrainConfig(lrs=(0.1,), l2sp_rates=0.01)
    assert (cfg.part_lrs(), cfg.part_l2sp()) == ((0.1,) * 3, (0.01,) * 3)


def test_the_new_parts_l2sp_is_l2() -> None:
    towards_w0, towards_zero = per_part.effective_rates((0.1, 0.2, 0.3), (0.01, 0.02, 0.03))
    assert towards_w0 == (0.0, 0.2, 0.3)
    assert towards_zero == pytest.approx((0.11, 0.02, 0.03))


def test_axes_and_vectors_round_trip() -> None:
    values = {"lr_new": 0.3, "lr_upper": 0.1, "lr_lower": 0.01, "l2sp_lower": 0.1, "l2_upper": 5e-4}
    vectors = per_part.vectors_from_axes(values)
    assert vectors == {
        "lrs": (0.3, 0.1, 0.01),
        "l2sp_rates": (0.0, 0.0, 0.1),
        "l2_rates": (0.0, 5e-4, 0.0),
    }
    back = per_part.axes_from_vectors(vectors)
    assert {k: back[k] for k in values} == values
    assert per_part.vectors_from_axes({"lr": 0.1, "l2sp": 0.01}) == {
        "lrs": (0.1,),
        "l2sp_rates": (0.01,),
    }


def test_flat_columns_read_a_config_as_it_trains() -> None:
    row = per_part.flat({"lrs": [0.1], "l2sp_rates": [0.01], "l2_rates": [0.0, 5e-4, 0.0]})
    assert row == {
        "lr_new": 0.1,
        "lr_upper": 0.1,
        "lr_lower": 0.1,
        "l2sp_upper": 0.01,
        "l2sp_lower": 0.01,
        "l2_new": 0.01,  # the new part's L2-SP pulls towards zero
        "l2_upper": 5e-4,
        "l2_lower": 0.0,
    }
    assert all(math.isnan(v) for v in per_part.flat({"lrs": [0.1, 0.2]}).values())


def test_equal_settings_compare_equal() -> None:
    assert per_part.normal("lrs", [0.1]) == per_part.normal("lrs", [0.1, 0.1, 0.1])
    assert per_part.normal("weight_decay", 0) == per_part.normal("weight_decay", 0.0)
    assert per_part.normal("crop_scale", [0.08, 1.0]) == [0.08, 1.0]  # not a per-part vector
    assert per_part.show([0.3, 0.1]) == "[0.3, 0.1]" and per_part.show(None) == "unset"
