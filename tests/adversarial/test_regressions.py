"""Protocol bugs the adversarial suites found, pinned as seeded simulator runs.

Each test prints the command that replays it (`bft sim --scenario FILE`).
"""

from __future__ import annotations

from pathlib import Path

from adversary.scenario import parse_scenario
from adversary.sim import Simulation

EQUIVOCATING_PRIMARY = """
description = "regression: one equivocating primary (f = 1) crashes an honest replica"

[sim]
nodes = 4
seed = 0
requests = 5
think_ms = [50.0, 200.0]

[[adversary]]
node = 0
behaviour = "equivocate"
params = { overlap = 0 }
"""


def test_honest_replica_survives_equivocating_primary(tmp_path: Path) -> None:
    """Found by the adversarial matrix: a single equivocating primary (within f) makes an
    honest backup raise InvariantViolation("batch of seq N does not match its digest").

    The backup accepted the primary's PRE-PREPARE for version B of seq N (slot.digest = B),
    then decided version A of seq N by a commit certificate relayed by the other backups
    (`_decide_by_certificate`: slot.batch := None, fetch A). The primary then resends its
    version-B proposal: `_on_proposal` hands it to `_got_batch` because B is the slot's
    `digest` and the slot has no batch; `_got_batch` stores batch B in the slot although the
    slot is decided for A, and `_check_committed` -> `_execute_ready` finds the batch does not
    match the decided digest. A slot that is decided must only take the batch of its decided
    digest (`_got_batch`: require `slot.decided is None or slot.decided == digest` before the
    second branch; `_on_proposal`: with `waiting.decided` set, only `pp.digest ==
    waiting.decided` may fill the batch).
    """
    path = tmp_path / "equivocating-primary-regression.toml"
    path.write_text(EQUIVOCATING_PRIMARY)
    print(f"replay: bft sim --scenario {path}")
    import tomllib

    scenario = parse_scenario(tomllib.loads(EQUIVOCATING_PRIMARY), path)
    result = Simulation(scenario.sim_config()).run(scenario.until_s)
    print("\n".join(result.violations))
    assert not any("InvariantViolation" in v for v in result.violations), result.violations
    assert result.safety_ok and result.liveness_ok, result.violations
