"""Pure policy logic of adaptd: detectors, signals, mixture ratios and the decision engine.

No I/O and no imports from other adaptd packages: every function here is deterministic and
all state is plain data that round-trips through JSON (``to_dict`` / ``from_dict``).
"""

from policies.actions import approve, override, reject
from policies.config import DEFAULT_RISK, PolicyConfig, RiskPolicy
from policies.decision import ACTIONS, Action, Decision, Status, TaskSignals
from policies.detectors import DEFAULT_THRESHOLD, DegradationDetector
from policies.engine import decide
from policies.events import clear_pending, observe, on_promotion, on_rejection, record_eval
from policies.merge import observed_tasks
from policies.ratios import RatioConfig, RatioState, prior_ratios, update_ratios
from policies.signals import (
    RISK_LEVELS,
    LiveComparison,
    PairVerdict,
    Risk,
    TaskProfile,
    coexistence,
    compatibility_matrix,
    eval_regressions,
    fold_affinity,
    live_regression,
)
from policies.state import (
    AdapterState,
    PolicyState,
    Probation,
    TaskState,
    init_state,
    summarize,
    sync_state,
)
from policies.windows import CrosstalkWindow

__all__ = [
    "ACTIONS",
    "DEFAULT_RISK",
    "DEFAULT_THRESHOLD",
    "RISK_LEVELS",
    "Action",
    "AdapterState",
    "CrosstalkWindow",
    "Decision",
    "DegradationDetector",
    "LiveComparison",
    "PairVerdict",
    "PolicyConfig",
    "PolicyState",
    "Probation",
    "RatioConfig",
    "RatioState",
    "Risk",
    "RiskPolicy",
    "Status",
    "TaskProfile",
    "TaskSignals",
    "TaskState",
    "approve",
    "clear_pending",
    "coexistence",
    "compatibility_matrix",
    "decide",
    "eval_regressions",
    "fold_affinity",
    "init_state",
    "live_regression",
    "observe",
    "observed_tasks",
    "on_promotion",
    "on_rejection",
    "override",
    "prior_ratios",
    "record_eval",
    "reject",
    "summarize",
    "sync_state",
    "update_ratios",
]
