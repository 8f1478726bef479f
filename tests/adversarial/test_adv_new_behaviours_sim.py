"""The issue-19 behaviours in seeded simulations: they act while requests are in flight, and
the correct replicas keep safety and liveness (PROTOCOL.md; DESIGN.md "The adversary").

Each case puts one behaviour on one replica at n = 4 and on f replicas at n = 7, with a
network fault that makes the protocol step it targets happen while the clients are busy: a
view change (the old primary cut off from 1 s to 3 s) for `withhold` and `bad-new-view`, a
state transfer (a backup cut off from 0.2 s to 1.5 s while checkpoints become stable) for
`bogus-chunks`; `crash-at` waits for its event. Every case checks that the behaviour acted
(its counters, or the simulator's crash points) before the last request completed, and that
no checker reported a violation. A failing case prints its seed and the replay command.
"""

from __future__ import annotations

from typing import Any

import pytest

from adversary.behaviours import make_rule
from adversary.netfaults import make_network_rule
from adversary.pytest_plugin import run_scenario
from adversary.scenario import Scenario

#: (n, seed) of each case: one replica at n = 4, f replicas at n = 7. (Seeds 1-15 of both
#: sizes, 450 runs, passed when this was written; campaigns are `bft explore`'s job.)
SIZES = ((4, 1), (7, 2))
SIM = {"requests": 30, "clients": 4, "think_ms": [20.0, 150.0], "checkpoint_interval": 4,
       "log_window": 8}


def cut(node: int, start: float, stop: float) -> Any:
    return make_network_rule("partition", groups=[[node]], start_s=start, stop_s=stop)


#: Checkpoints far apart: a NEW-VIEW's O re-proposes what executed since the last one.
WIDE = {"checkpoint_interval": 16, "log_window": 32}

#: name -> (behaviour, params, faulty replicas at n = 4, at n = 7, network faults at n,
#: [sim] overrides)
CASES: dict[str, tuple[Any, ...]] = {
    "withhold-certs": ("withhold", {"certs": 1.0, "checkpoint_back": 1}, (3,), (5, 6),
                       lambda n: [cut(0, 0.5, 3.0)]),
    "withhold-certs-wide": ("withhold", {"certs": 1.0}, (3,), (5, 6),
                            lambda n: [cut(0, 0.5, 3.0)], WIDE),
    "withhold-silent": ("withhold", {"silent_after_checkpoint": 8, "certs": 0.0}, (3,),
                        (5, 6), lambda n: []),
    "bogus-chunks-instead": ("bogus-chunks", {"mode": "instead", "push": True}, (0,), (0, 1),
                             lambda n: [cut(n - 1, 0.2, 1.5)]),
    "bogus-chunks-ahead": ("bogus-chunks", {"mode": "ahead"}, (0,), (0, 1),
                           lambda n: [cut(n - 1, 0.2, 1.5)]),
    "bad-new-view-split": ("bad-new-view", {"mode": "split"}, (1,), (1, 2),
                           lambda n: [cut(0, 0.5, 3.0), make_network_rule(
                               "drop", rate=0.3, start_s=0.4, stop_s=0.7)], WIDE),
    "bad-new-view-wrong-o": ("bad-new-view", {"mode": "wrong_o"}, (1,), (1, 2),
                             lambda n: [cut(0, 0.5, 3.0)], WIDE),
    "bad-new-view-reissue": ("bad-new-view", {"mode": "reissue"}, (1,), (1, 2),
                             lambda n: [cut(0, 0.5, 3.0)], WIDE),
    "crash-at-checkpoint": ("crash-at", {"event": "checkpoint", "seq": 8,
                                         "restart_after_s": 0.5}, (2,), (2, 5),
                            lambda n: []),
    "crash-at-checkpoint-before": ("crash-at", {"event": "checkpoint", "when": "before"},
                                   (0,), (0, 3), lambda n: []),
    "crash-at-prepare": ("crash-at", {"event": "prepare", "seq": 6}, (3,), (3, 6),
                         lambda n: []),
    "crash-at-pre-prepare": ("crash-at", {"event": "pre_prepare", "restart_after_s": 0.2},
                             (0,), (0, 1), lambda n: []),
    "crash-at-view-change": ("crash-at", {"event": "view_change"}, (2,), (2, 4),
                             lambda n: [cut(0, 0.5, 3.0)]),
    "crash-at-new-view": ("crash-at", {"event": "new_view", "when": "before"}, (1,), (1, 2),
                          lambda n: [cut(0, 0.5, 3.0)]),
    "crash-at-execute": ("crash-at", {"event": "execute", "seq": 10, "times": 1}, (3,),
                         (3, 6), lambda n: []),
}


def receivers_drops(run: Any) -> dict[str, int]:
    """The drop reasons of the correct replicas, summed."""
    total: dict[str, int] = {}
    for i in run.simulation.correct:
        node = run.simulation.nodes[i]
        for reason, k in getattr(getattr(node, "inner", node), "drops", {}).items():
            total[reason] = total.get(reason, 0) + k
    return total


CHUNK_DROPS = ("unexpected_state_chunk", "state_chunk_not_asked", "bad_state_chunk")

#: What the correct replicas must show of a behaviour's messages: refused for the intended
#: reason, or accepted (well-signed and valid); drops, events and evidence of the run.
RECEIVED = {
    "withhold": lambda d, r, nodes: not any(k.startswith("bad_view_change") for k in d),
    "bogus-chunks": lambda d, r, nodes: sum(d.get(k, 0) for k in CHUNK_DROPS)
    + r.events.get("state_transfer_mismatch", 0) > 0,
    "bad-new-view": lambda d, r, nodes: not any(k.startswith("new_view_") for k in d),
}


def acted_at(run: Any, nodes: tuple[int, ...], behaviour: str) -> list[float]:
    """When each faulty replica's behaviour first acted (crash points: when they crashed)."""
    sim = run.simulation
    if behaviour == "crash-at":
        return [t for t, i, kind, _ in sim.event_log if kind == "crash_point" and i in nodes]
    out = []
    for i in nodes:
        node = sim.nodes[i]
        stats = node.statistics().get("adversary", {}) if node is not None else {}
        out += [b["first_acted_s"] for b in stats.get("behaviours", ())
                if b["behaviour"] == behaviour and b["first_acted_s"] is not None]
    return out


@pytest.mark.parametrize("n, seed", SIZES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_new_behaviour_keeps_safety_and_liveness(case: str, n: int, seed: int) -> None:
    behaviour, params, at4, at7, network, *sim = CASES[case]
    nodes = at4 if n == 4 else at7
    rules = tuple(make_rule(i, behaviour, params=params) for i in nodes)
    settings = {"nodes": n, "seed": seed, **SIM, **(sim[0] if sim else {})}
    scenario = Scenario(rules, tuple(network(n)), settings, {}, f"issue 19 behaviour {case}")
    run = run_scenario(scenario)
    print(f"seed={run.seed} case={case} n={n}")
    run.check()  # safety, liveness, the evidence witness; prints the replay command if not
    r = run.result
    assert r.completed_requests == r.requests
    times = acted_at(run, nodes, behaviour)
    assert times, f"{behaviour} never acted"
    done = run.simulation._done_at
    assert done is not None and min(times) < done, (
        f"{behaviour} first acted at {min(times):.3f} s, after the last request ({done:.3f} s)")
    if behaviour == "crash-at":
        assert r.network.get("crash_points", 0) >= 1 and r.network.get("restarts", 0) >= 1
        return
    drops = receivers_drops(run)
    print({k: v for k, v in drops.items() if "view" in k or "chunk" in k or "pre_prepare" in k})
    if params.get("mode") == "wrong_o":  # refused by the correct backups, for its O
        assert drops.get("new_view_wrong_o", 0) >= 1, drops
    elif params.get("mode") == "reissue":  # refused, with a proof against the primary
        assert drops.get("conflicting_pre_prepare", 0) >= 1, drops
        assert {e["culprit"] for e in r.evidence} & set(nodes), r.evidence
    else:
        assert RECEIVED[behaviour](drops, r, nodes), drops


def test_crash_points_are_counted_per_rule_and_a_node_may_stay_down() -> None:
    """`times` crashes in all (each restart re-arms the rule); `restart = false` leaves the
    node down (a crash-stop node: the other three go on)."""
    twice = make_rule(3, "crash-at", params={"event": "execute", "times": 2,
                                             "restart_after_s": 0.3})
    run = run_scenario(Scenario((twice,), (), {"nodes": 4, "seed": 3, **SIM}))
    print(f"seed={run.seed}")
    run.check()
    assert run.result.network["crash_points"] == 2 and run.result.network["restarts"] == 2
    points = [t for t, i, kind, _ in run.simulation.event_log if kind == "crash_point"]
    assert len(points) == 2 and points[1] > points[0] + 0.3  # the second after the restart
    down = make_rule(3, "crash-at", params={"event": "commit", "restart": False})
    run = run_scenario(Scenario((down,), (), {"nodes": 4, "seed": 3, **SIM}))
    run.check()
    assert run.result.network["crash_points"] == 1 and "restarts" not in run.result.network
    assert run.simulation.nodes[3] is None and run.result.completed_requests == 30 * 4


def test_bft_up_refuses_a_crash_point_clearly(tmp_path, capsys) -> None:
    """Real processes cannot crash at a protocol event and restart relative to it (the
    launcher restarts at times known in advance): `bft up --scenario` says so, exit 2."""
    from bft.bench import config_to_toml, local_config
    from bft.cli import main

    cfg = tmp_path / "cluster.toml"
    cfg.write_text(config_to_toml(local_config(4, name="refuse-crash-at")))
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[adversary]]\nnode = 2\nbehaviour = "crash-at"\n')
    code = main(["up", str(cfg), "--no-tui", "--state-dir", str(tmp_path / "state"),
                 "--scenario", str(scenario)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "adversary[0].behaviour" in err and "runs only in the simulator" in err


def test_a_split_new_view_with_another_o_is_refused_where_it_conflicts() -> None:
    """`bad-new-view` split end to end: primary 0 is cut off at 0.5 s and half the datagrams
    to replicas 2 and 3 are lost until 2.5 s, so they miss certificates that primary 1 of
    view 1 (Byzantine) holds. Group B (replica 3) gets a valid NEW-VIEW whose O differs
    from group A's; once it prepared a seq where the two conflict, primary 1 sends it group
    A's PRE-PREPARE for that seq: replica 3 refuses it and holds a proof against primary 1
    (PROTOCOL.md "Evidence"); every request completes, nothing is violated."""
    rules = (make_rule(1, "bad-new-view", params={"mode": "split"}),)
    net = (cut(0, 0.5, 3.0),
           make_network_rule("drop", rate=0.5, start_s=0.3, stop_s=2.5, nodes=(2, 3)))
    run = run_scenario(Scenario(rules, net, {"nodes": 4, "seed": 2, **SIM, **WIDE}))
    print(f"seed={run.seed}")
    run.check()
    counters = run.simulation.nodes[1].statistics()["adversary"]["behaviours"][0]["counters"]
    assert counters.get("split_new_views") == 1 and "split_same_o" not in counters, counters
    assert counters.get("second_pre_prepares", 0) >= 1
    proofs = [e for e in run.result.evidence if e["culprit"] == 1]
    assert any(e["holder"] == 3 and e["kind"] == "pre_prepare" for e in proofs), proofs
