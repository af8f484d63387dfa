"""INFERBUS_REGIONS: which region hosts each zone, and so which stream keeps
each queue, log, check and content subject."""
import pytest

from bus import regions, subjects
from bus.regions import RegionError
from bus.stream_configs import stream_configs
from bus.zones import ZONES


def test_without_regions_the_network_is_one_region_stored_as_before():
    layout = regions.parse(None)
    assert not layout.split and layout.zones(layout.home) == ZONES
    assert layout.queue_stream(subjects.node_queue("ab" * 32, "eu")) == "JOBS"
    assert [c.name for c, _ in stream_configs(layout)] == [
        "JOBS", "EVENTS", "DEADLETTER", "CHECKS", "CONTENT"]
    assert all(c.placement is None for c, _ in stream_configs(layout))


def test_region_names_alone_take_the_default_zones_and_the_home_region_the_rest():
    layout = regions.parse("eu,na")
    assert layout.zones("eu") == ("eu", "me", "af", "sea", "ea", "sa_asia", "oc")
    assert layout.zones("na") == ("na", "sa") and layout.home == "eu"
    assert layout.region_of("sa") == "na" and layout.region_of(subjects.GLOBAL) == "eu"


def test_each_queue_is_kept_in_its_home_zones_region_and_global_in_the_pool():
    layout = regions.parse("na=na,sa;eu=eu,me")
    assert layout.queue_stream("me") == "JOBS_eu"
    assert layout.queue_stream(subjects.node_queue("cd" * 32, "me")) == "JOBS_eu"
    assert layout.queue_stream(subjects.subcloud_queue("acme", "eu")) == "JOBS_eu"
    assert layout.queue_stream(subjects.subcloud_queue("acme")) == "JOBS"
    assert layout.queue_stream(subjects.GLOBAL) == "JOBS"
    assert layout.queue_stream("sea") == "JOBS_na"  # unlisted: the home region's


def test_split_streams_never_claim_the_same_subject_and_are_each_placed_by_tag():
    layout = regions.parse("eu=eu,me,af;na=na,sa;ap=sea,ea,oc,sa_asia")
    configs = stream_configs(layout)
    filters = [f for c, _ in configs for f in c.subjects or ()]
    assert len(filters) == len(set(filters))  # NATS refuses overlapping streams
    for config, region in configs:
        assert (config.placement.cluster, config.placement.tags) == (region, [f"region:{region}"])
    events = next(c for c, _ in configs if c.name == "EVENTS")
    assert [s.name for s in events.sources] == ["EVENTS_eu", "EVENTS_na", "EVENTS_ap"]
    content = next(c for c, _ in configs if c.name == "CONTENT_eu")
    assert "content.global.>" in content.subjects  # a zoneless job's content: home region


@pytest.mark.parametrize("text,error", [
    ("eu=eu;na=eu", "hosted by both"), ("eu=atlantis", "unknown zone"),
    ("EU=eu", "region name"), ("eu,eu", "named twice"), ("eu=;na=na", "hosts no zone"),
    ("eu,mars", "hosts no zone")])
def test_a_bad_region_list_is_refused_naming_the_problem(text, error):
    with pytest.raises(RegionError, match=error):
        regions.parse(text)
