"""`auto` batch sizes: the search over a card's memory (a card simulated through torch.cuda's own functions),
what it remembers, and what auto means without a GPU. On a real card: bench/throughput.py's `*-auto` rows."""
import json

import pytest
import torch

from maskgate import config
from maskgate.model import autobatch
from tests.conftest import project_params


class Card:
    """A GPU of `total` bytes on which a step of size b needs `fixed + b * per_example` bytes."""

    def __init__(self, monkeypatch, total, fixed, per_example):
        self.total, self.fixed, self.per_example, self.peak, self.steps = total, fixed, per_example, 0, []
        self.used_by_others = 0
        props = type("Props", (), {"name": "Simulated GPU", "total_memory": total})
        for name, fn in {"is_available": lambda: True, "current_device": lambda: 0,
                         "get_device_properties": lambda i: props, "empty_cache": lambda: None,
                         "reset_peak_memory_stats": lambda: None, "synchronize": lambda: None,
                         "max_memory_allocated": lambda: self.peak, "memory_reserved": lambda: 0,
                         "mem_get_info": lambda: (self.total - self.used_by_others, self.total)}.items():
            monkeypatch.setattr(torch.cuda, name, fn)

    def step(self, size):
        self.steps.append(size)
        need = self.fixed + size * self.per_example
        if need > self.total - self.used_by_others:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.peak = need


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKGATE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "batch_sizes.json"


def test_largest_that_fits_within_headroom_then_remembered(monkeypatch, cache):
    gib = 2**30
    card = Card(monkeypatch, total=100 * gib, fixed=20 * gib, per_example=5 * gib)
    said = []
    # 16 needs 100 GiB: fits the card but not the 90% headroom; 32 and 64 run out of memory
    # the settings as train passes them: config sections among them (the H200 run once failed writing these)
    lora = config.from_dict(project_params()).train.lora
    size = autobatch.find("train", {"lora": lora}, autobatch.divisors(64), card.step, "train", said.append)
    assert size == 8 and card.steps == [64, 32, 16, 8]
    assert "batch size auto: 8 fits Simulated GPU" in said[-1]
    record = next(iter(json.loads(cache.read_text()).values()))
    assert record["batch_size"] == 8 and record["tried"] == {"64": "out of memory", "32": "out of memory",
                                                             "16": "peak 100.0 GiB", "8": "peak 60.0 GiB"}
    card.steps.clear()
    assert autobatch.find("train", {"lora": lora}, autobatch.divisors(64), card.step, "train", said.append) == 8
    assert card.steps == [] and "remembered" in said[-1]
    assert record["settings"]["lora"]["r"] == lora.r  # the second run does not search
    # other settings, or another card, search again
    assert autobatch.find("train", {"lora": 64}, autobatch.divisors(64), card.step, "train", said.append) == 8
    assert card.steps == [64, 32, 16, 8]


def test_a_bigger_card_gets_a_bigger_batch(monkeypatch, cache):
    gib = 2**30
    small = Card(monkeypatch, total=48 * gib, fixed=20 * gib, per_example=5 * gib)
    assert autobatch.find("score", {}, autobatch.SCORING_CANDIDATES, small.step, "t", lambda *_: None) == 4
    big = Card(monkeypatch, total=139 * gib, fixed=20 * gib, per_example=5 * gib)
    assert autobatch.find("score", {}, autobatch.SCORING_CANDIDATES, big.step, "t", lambda *_: None) == 16


def test_nothing_fits_is_an_error(monkeypatch, cache):
    card = Card(monkeypatch, total=2**30, fixed=2**31, per_example=1)
    with pytest.raises(RuntimeError, match="not even a batch of 1 fits Simulated GPU"):
        autobatch.find("train", {}, [4, 2, 1], card.step, "train", lambda *_: None)
    assert not cache.exists()


def test_on_a_cpu_auto_is_a_small_fixed_batch(monkeypatch, cache):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    said = []
    assert autobatch.find("train", {}, autobatch.divisors(48), None, "train", said.append) == 4
    assert autobatch.find("train", {}, autobatch.divisors(6), None, "train", said.append) == 3
    assert "on a CPU" in said[0] and not cache.exists()


@pytest.mark.parametrize("section,key", [("train", "micro_batch_size"), ("evaluate", "batch_size")])
def test_auto_is_a_params_value(section, key):
    p = project_params()
    p[section][key] = "auto"
    assert getattr(getattr(config.from_dict(p), section), key) == "auto"
    for bad in ("Auto", 0, 2.5):
        p[section][key] = bad
        with pytest.raises(config.ParamsError, match=f"{section}.{key}"):
            config.from_dict(p)


def test_memory_another_process_holds_is_not_counted_as_ours(monkeypatch, cache):
    gib = 2**30
    card = Card(monkeypatch, total=139 * gib, fixed=20 * gib, per_example=5 * gib)
    card.used_by_others = 35 * gib  # 104 GiB free: 16 (100 GiB) runs, but past 90% of what is free; 8 (60) does not
    assert autobatch.find("train", {}, autobatch.divisors(64), card.step, "t", lambda *_: None) == 8
