"""Importers of real logged bandit feedback into the bandit-feedback table (see feedback-table.md).

* ``obd`` — Open Bandit Dataset CSVs (ZOZOTOWN; random and Bernoulli-TS logging, 3 slots).
* ``dsjson`` — Decision Service / Azure Personalizer DSJSON exports (single-slot CB and multi-slot CCB).

Both produce polars tables with ``event_id, position, action, reward, pscore, target_pscore`` (plus
optional columns) that ``evaluators`` estimators read directly.
"""

from evaluators.importers.dsjson import DsjsonFormatError, DsjsonImport, load_dsjson, read_dsjson
from evaluators.importers.obd import (
    ObdLog,
    bts_action_dist,
    bts_prior,
    empirical_action_dist,
    load_obd,
    obd_feedback_table,
    uniform_action_dist,
)

__all__ = [
    "DsjsonFormatError",
    "DsjsonImport",
    "ObdLog",
    "bts_action_dist",
    "bts_prior",
    "empirical_action_dist",
    "load_dsjson",
    "load_obd",
    "obd_feedback_table",
    "read_dsjson",
    "uniform_action_dist",
]
