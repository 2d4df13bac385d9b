"""The typed session and the one text form of settings: `Session.to_state()` / `from_state()` round-trip,
the history keeps each settings once (newest first, bounded), `Settings.describe()` is what labels, stamps and
export names say."""

from __future__ import annotations

import json

from explorer.service.export import export_name
from explorer.session import HISTORY, Session, answers_stale
from explorer.settings import METHOD, Schema, Settings

SCHEMA = Schema.build()


def settings(**values) -> Settings:
    return Settings.from_controls(values, SCHEMA)


def test_describe_names_the_method_and_only_what_it_reads():
    s = settings(method="prumerge+", iqr_multiplier=1.0, merge=False, tau=0.9)
    described = s.describe()
    assert list(described)[0] == METHOD and described[METHOD] == "prumerge+"
    assert described["iqr_multiplier"] == "1.0" and described["merge"] == "false" and "tau" not in described
    assert s.label() == "PruMerge+ (iqr_multiplier=1.0, merge=false, neighbours=32, order=attention, attention=official)"
    assert export_name(s).startswith("prumerge+_iqr_multiplier-1.0_merge-false")
    assert settings(method="all").label() == "All tokens" and settings(method="all").describe() == {METHOD: "all"}
    back = Settings.from_controls(described, SCHEMA)  # every described value reads back
    assert back.relevant() == s.relevant()


def test_session_round_trips_through_plain_data():
    s = settings(method="par", tau=0.25)
    session = Session(path="/tmp/a.png", key="k1", model="offline", image_name="a.png").explored(
        s, "what?", {"n_kept": 3}, (336, 336), (0, 0, 10, 10), 576, {"n_kept": 3}, 3)
    state = session.to_state()
    json.dumps(state)  # plain data
    again = Session.from_state(state, SCHEMA)
    assert again == session and Session.of(state, SCHEMA) == session and Session.of(session, SCHEMA) is session
    assert Session.of(None, SCHEMA) == Session() and Session.of({}, SCHEMA) == Session()


def test_history_is_newest_first_without_repeats_and_bounded():
    session = Session()
    for tau in [0.1, 0.2, 0.1] + [i / 100 for i in range(30, 30 + HISTORY)]:
        session = session.explored(settings(method="par", tau=tau), "", {}, (1, 1), (0, 0, 1, 1), 4, {}, 2)
    assert len(session.history) == HISTORY
    taus = [run.settings.params.tau for run in session.history]
    assert len(set(taus)) == len(taus) and taus[0] == (30 + HISTORY - 1) / 100
    assert session.run(0) is session.history[0] and session.run(HISTORY) is None and session.run("x") is None
    assert session.history[0].label.startswith("PAR (as specified here) (") and session.history[0].label.endswith("→ 2 tokens")


def test_answers_are_stale_when_the_stamp_differs():
    session = Session(stamp={"n_kept": 3})
    assert not answers_stale(None, session)
    assert not answers_stale({"stamp": {"n_kept": 3}}, session)
    assert answers_stale({"stamp": {"n_kept": 4}}, session)
