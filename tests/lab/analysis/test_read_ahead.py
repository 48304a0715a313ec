"""measure.read_ahead: the same items in order, the producer's errors raised, early exits stop it."""
import threading

import pytest

from lab.analysis.measure import read_ahead


def test_items_come_in_order():
    assert list(read_ahead(iter(range(100)))) == list(range(100))
    assert list(read_ahead(iter([]))) == []


def test_an_error_in_the_walk_is_raised_to_the_reader():
    def walk():
        yield 1
        raise ValueError("bad block")
    got = []
    with pytest.raises(ValueError, match="bad block"):
        for item in read_ahead(walk()):
            got.append(item)
    assert got == [1]


def test_leaving_early_stops_the_walk():
    produced = []

    def walk():
        for i in range(10**6):
            produced.append(i)
            yield i
    for item in read_ahead(walk()):
        if item == 3:
            break
    assert len(produced) <= 6                    # at most the one taken, the one handed over, the one walked
    assert not any(t.name == "lab-measure-walk" for t in threading.enumerate())
