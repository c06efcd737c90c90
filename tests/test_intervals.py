"""The one interval format of the leaderboard, the report, the dashboard's notes and the card."""

import math

from search.results.intervals import format_interval


def test_an_interval_is_low_dash_high_to_three_places():
    assert format_interval([0.12345, 0.98765]) == "0.123-0.988"
    assert format_interval([0.5, 1.0]) == "0.500-1.000"


def test_a_table_may_ask_for_more_places():
    assert format_interval([0.12345, 0.98765], places=4) == "0.1235-0.9877"


def test_no_interval_is_a_dash_or_what_the_caller_says():
    assert format_interval(None) == "-"
    assert format_interval(math.nan) == "-"
    assert format_interval(None, missing="") == ""
