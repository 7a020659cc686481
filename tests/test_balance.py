"""Balanced selections: ``-a per_class=N -a seed=S`` keeps at most N images per
requested class, images carrying every requested class first, the same images
for a seed whatever the file order (``ClassFilter.balanced``). Unit tests of the
rule, the arguments, and one crawl of the real V3 sample (tests/data/v3-sample)."""

from __future__ import annotations

import csv
import hashlib
import logging
import random
from pathlib import Path

import pytest

from openimages_crawler.dataset.annotations import ClassFilter
from openimages_crawler.job.arguments import ArgumentError, CrawlArguments
from openimages_crawler.job.prepare import MetadataOptions, prepare, selection_of
from tests.conftest import outcomes
from tests.test_classes import SampleMirror, annotation_lines, crawl, mids_of, rows_of, sample_mirror, written  # noqa: F401

CLASSES = ClassFilter({"A": frozenset({"/m/a"}), "B": frozenset({"/m/b"}), "C": frozenset({"/m/c"})})
EVERY = 0b111


def pool(count: int, *, seed: int = 1, every_share: float = 0.1) -> dict[str, int]:
    """``count`` images with random class bits (about ``every_share`` of them with every class)."""
    chance = random.Random(seed)
    found = {}
    for i in range(count):
        image_id = hashlib.sha1(f"{seed}-{i}".encode()).hexdigest()[:16]
        found[image_id] = EVERY if chance.random() < every_share else chance.randint(1, EVERY - 1)
    return found


def per_class(found: dict[str, int], image_ids: list[str]) -> list[int]:
    """Images per class, counted here from the bits (not by ClassFilter.counts)."""
    return [sum(found[image_id] >> bit & 1 for image_id in image_ids) for bit in range(3)]


def shuffled(found: dict[str, int], seed: int) -> dict[str, int]:
    items = list(found.items())
    random.Random(seed).shuffle(items)
    return dict(items)


# --- the rule ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 50, 400])
def test_at_most_n_per_class_and_nothing_more_could_be_added(n: int) -> None:
    for pool_seed in range(5):
        found = pool(1000, seed=pool_seed, every_share=0.02)
        for seed in (0, 1, 99):
            taken = CLASSES.balanced(found, n, seed)
            assert len(taken) == len(set(taken)) and set(taken) <= set(found)
            counts = per_class(found, taken)
            assert max(counts) <= n, (n, counts)
            assert CLASSES.counts(found, taken) == dict(zip("ABC", counts, strict=True))
            # Greedy to the end: every image left out has a class already at n.
            full = {bit for bit in range(3) if counts[bit] == n}
            for image_id in set(found) - set(taken):
                assert any(found[image_id] >> bit & 1 for bit in full), image_id


def test_images_with_every_class_come_first() -> None:
    found = pool(2000, every_share=0.01)
    every = {image_id for image_id, mask in found.items() if mask == EVERY}
    assert 5 < len(every) < 50
    # Fewer such images than n: all of them taken, before any other.
    taken = CLASSES.balanced(found, 60, 3)
    assert set(taken[:len(every)]) == every and every <= set(taken)
    assert per_class(found, taken) == [60, 60, 60]
    # As many or more: n of them and nothing else (every class is full).
    taken = CLASSES.balanced(found, 5, 3)
    assert len(taken) == 5 and set(taken) <= every
    assert per_class(found, taken) == [5, 5, 5]


def test_the_same_seed_takes_the_same_images_whatever_the_file_order() -> None:
    found = pool(3000)
    first = CLASSES.balanced(found, 20, 7)
    for order in range(5):
        assert CLASSES.balanced(shuffled(found, order), 20, 7) == first
    assert CLASSES.balanced(found, 20) == CLASSES.balanced(found, 20, 0)  # seed 0 by default


def test_another_seed_takes_another_sample() -> None:
    found = pool(3000)
    samples = {frozenset(CLASSES.balanced(found, 20, seed)) for seed in range(10)}
    assert len(samples) == 10
    # Not the file order, nor the ids' order: a keyed hash of them.
    single = ClassFilter({"A": frozenset({"/m/a"})})
    ones = {image_id: 1 for image_id in found}
    taken = single.balanced(ones, 30, 0)
    assert taken != list(ones)[:30] and taken != sorted(ones)[:30]
    assert taken == single.balanced(shuffled(ones, 1), 30, 0)


def test_match_all_keeps_at_most_n_images_with_every_class() -> None:
    both = ClassFilter(CLASSES.classes, match_all=True)
    found = pool(2000, every_share=0.01)
    every = {image_id for image_id, mask in found.items() if mask == EVERY}
    taken = both.balanced(found, 4, 11)
    assert len(taken) == 4 and set(taken) <= every
    assert set(both.balanced(found, 10_000, 11)) == every


def test_n_larger_than_the_pool_keeps_every_candidate() -> None:
    found = pool(500)
    assert sorted(CLASSES.balanced(found, 501, 2)) == sorted(found)
    assert CLASSES.balanced({}, 3, 2) == []


def test_n_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="must be 1 or more"):
        CLASSES.balanced(pool(10), 0)


# --- the arguments ----------------------------------------------------------------


def test_per_class_and_seed_arguments() -> None:
    parse = CrawlArguments.parse
    parsed = parse(version=3, subset="validation", classes="Person,Car", per_class="2", seed="5")
    assert (parsed.per_class, parsed.seed) == (2, 5)
    parsed = parse(version=3, subset="validation", classes="Person", per_class="10")
    assert (parsed.per_class, parsed.seed) == (10, 0)
    assert parse(version=3, subset="validation", classes="Person").per_class is None
    assert parse(version=3, subset="validation", classes="Person", per_class="1",
                 seed=str((1 << 64) - 1)).seed == (1 << 64) - 1
    for given, message in (
        ({"per_class": "2"}, "-a per_class only apply with -a classes"),
        ({"per_class": "2", "seed": "1"}, "-a per_class, -a seed only apply with -a classes"),
        ({"classes": "Person", "per_class": "-1"}, "-a per_class='-1' must be 0 or more"),
        ({"classes": "Person", "per_class": "abc"}, "-a per_class='abc' is not a whole number"),
        ({"classes": "Person", "per_class": "0"}, "-a per_class=0 would select nothing: give 1 or more"),
        ({"classes": "Person", "per_class": "2", "seed": "abc"}, "-a seed='abc' is not a whole number"),
        ({"classes": "Person", "per_class": "2", "seed": "-3"}, "-a seed='-3' must be 0 to"),
        ({"classes": "Person", "per_class": "2", "seed": str(1 << 64)}, "-a seed='18446744073709551616' must be"),
        ({"classes": "Person", "seed": "5"}, "-a seed only applies with -a per_class"),
    ):
        with pytest.raises(ArgumentError, match="^" + message.replace("(", r"\(")):
            parse(version=3, subset="validation", **given)
    with pytest.raises(ArgumentError, match="unknown argument -a per_clas; did you mean -a per_class"):
        CrawlArguments.from_given({"version": "3", "subset": "validation", "classes": "Person", "per_clas": "2"})


# --- against the V3 sample --------------------------------------------------------


def sample_classes(split: str, names: tuple[str, ...]) -> dict[str, set[str]]:
    """Per image of the sample's boxes, which of ``names`` it carries: read here, not by the crawler."""
    mids = {name: mids_of(name) for name in names}
    carried: dict[str, set[str]] = {}
    for row in csv.reader(annotation_lines(split, "boxes")[1]):
        for name, ids in mids.items():
            if row[2] in ids:
                carried.setdefault(row[0], set()).add(name)
    return carried


def test_shards_split_one_balanced_set(sample_mirror: SampleMirror, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """The balanced set is computed before the shard filter: every shard's is the same."""
    sample_mirror.publish_version(3)
    options = MetadataOptions(tmp_path / "metadata", sample_mirror.base, 1 << 20, verify=False)
    sets = []
    for shard in (None, "1/2", "2/2"):
        given = {"shard": shard} if shard else {}
        arguments = CrawlArguments.parse(version=3, subset="validation", classes="Person,Car", per_class="2",
                                         seed="5", **given)
        with caplog.at_level(logging.INFO, logger="openimages_crawler.job.prepare"):
            plan = prepare(arguments, options, selection_of(arguments))
        assert plan.selection.classes is not None
        chosen = plan.selection.classes.by_split["validation"]
        carried = sample_classes("validation", ("Person", "Car"))
        sets.append({image_id for image_id in carried if image_id in chosen})
        assert len(chosen) == len(sets[-1])
    assert sets[0] == sets[1] == sets[2]
    assert "3 validation images taken with -a per_class=2 seed=5: Person 2, Car 2" in caplog.text


@pytest.mark.e2e
def test_a_balanced_crawl_of_the_sample(sample_mirror: SampleMirror, tmp_path: Path) -> None:
    sample_mirror.publish_version(3)
    names = ("Person", "Car")
    carried = sample_classes("validation", names)
    every = {image_id for image_id, found in carried.items() if found == set(names)}
    assert len(every) == 1  # the sample's validation boxes: one image with both, 8 Person, 6 Car
    stored = []
    for run in ("one", "two"):
        store = tmp_path / run
        done = crawl(sample_mirror, store, version="3", subset="validation", classes="Person,Car",
                     per_class="2", seed="5")
        assert done.returncode == 0, done.stderr[-3000:]
        assert "3 validation images taken with -a per_class=2 seed=5: Person 2, Car 2" in done.stderr
        images = outcomes(store, "validation")
        assert all(results == ["success"] for results in images.values())
        stored.append(set(images))
        assert set(images) <= set(carried)
        for name in names:
            assert sum(name in carried[image_id] for image_id in images) == 2, name  # at most 2; here 2
        assert every <= set(images)  # the image with both first
        assert len(images) == 3
        header, lines = written(store, "validation", "boxes")
        official_header, official = annotation_lines("validation", "boxes")
        assert header == official_header and lines == rows_of(official, set(images), mids_of(*names))
        assert {line.split(",")[0] for line in lines} == set(images)
        _, labels = written(store, "validation", "labels")
        assert labels == rows_of(annotation_lines("validation", "labels")[1], set(images), mids_of(*names))
    assert stored[0] == stored[1]
