"""When a monitor changes state and who hears of it: the state machine the sink runs over each
stored check, the incidents it opens and closes, and the notification each channel is sent.

Pure functions only; the sink calls them inside the transaction that stores the checks
(store.save_checks), so a transition, its incident and its deliveries commit with the check.
"""

import json
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from errands.core.http import masked_url

__all__ = [
    "AlertState",
    "AlertType",
    "Channel",
    "Incident",
    "State",
    "StoredCheck",
    "Transition",
    "Verdict",
    "advance",
    "alert_id",
    "alert_type",
    "cause_of",
    "delivery_id",
    "notification_body",
    "notification_text",
]

State = Literal["new", "up", "degraded", "down"]
Verdict = Literal["up", "degraded", "down"]
AlertType = Literal["monitor.down", "monitor.up", "monitor.degraded", "monitor.tls_expiring"]

# Worse verdicts rank higher; a move to a better one is a recovery and needs success_threshold.
_RANK: dict[str, int] = {"new": 0, "up": 0, "degraded": 1, "down": 2}
# Alert and delivery ids are derived from the check (and channel), so a check stored twice, or a
# delivery row written twice, can only ever be the same row.
_NAMESPACE = uuid.UUID("5b0f2c55-6a43-4d3c-9a53-3f2f7c4f0a11")


@dataclass(frozen=True)
class AlertState:
    state: State
    state_since: datetime | None
    pending_state: Verdict | None
    pending_checks: int
    pending_since: datetime | None


@dataclass(frozen=True)
class StoredCheck:
    check_id: uuid.UUID
    checked_at: datetime
    verdict: Verdict
    status_code: int | None
    response_time_ms: float | None
    error: str | None
    tls_expires_at: datetime | None


@dataclass(frozen=True)
class Transition:
    from_state: State
    to_state: Verdict
    since: datetime  # the first check of the run that made the change
    check: StoredCheck  # the check that crossed the threshold


def advance(
    current: AlertState,
    check: StoredCheck,
    *,
    failure_threshold: int,
    success_threshold: int,
) -> tuple[AlertState, Transition | None]:
    """The state after one more check, and the transition it caused, if any. A run of
    `failure_threshold` checks worse than the state moves it there, a run of
    `success_threshold` better ones moves it back; a new monitor's first good check makes it up
    without a transition (nothing to tell anyone)."""
    verdict = check.verdict
    if verdict == current.state:
        return AlertState(current.state, current.state_since, None, 0, None), None
    if current.state == "new" and verdict == "up":
        return AlertState("up", check.checked_at, None, 0, None), None
    if verdict == current.pending_state and current.pending_since is not None:
        run, since = current.pending_checks + 1, current.pending_since
    else:
        run, since = 1, check.checked_at
    recovering = _RANK[verdict] < _RANK[current.state]
    if run >= (success_threshold if recovering else failure_threshold):
        changed = AlertState(verdict, check.checked_at, None, 0, None)
        return changed, Transition(current.state, verdict, since, check)
    return replace(current, pending_state=verdict, pending_checks=run, pending_since=since), None


def alert_type(transition: Transition) -> AlertType:
    kinds: dict[Verdict, AlertType] = {
        "down": "monitor.down",
        "up": "monitor.up",
        "degraded": "monitor.degraded",
    }
    return kinds[transition.to_state]


def cause_of(check: StoredCheck, max_response_ms: float | None) -> str:
    """Why a check was not up, in a line a person can act on."""
    if check.verdict == "degraded" and max_response_ms is not None:
        return f"responded in {check.response_time_ms:.0f} ms, slower than {max_response_ms:g} ms"
    if check.error:
        return check.error
    if check.status_code is not None:
        return f"answered with status {check.status_code}, which the monitor does not expect"
    return "the check failed"


@dataclass(frozen=True)
class Incident:
    id: uuid.UUID
    monitor_id: uuid.UUID
    state: Verdict
    cause: str
    started_at: datetime
    resolved_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        duration = None
        if self.resolved_at is not None:
            duration = round((self.resolved_at - self.started_at).total_seconds(), 3)
        return {
            "id": str(self.id),
            "state": self.state,
            "cause": self.cause,
            "started_at": self.started_at.isoformat(),
            "resolved_at": None if self.resolved_at is None else self.resolved_at.isoformat(),
            "duration_s": duration,
        }


@dataclass(frozen=True)
class Channel:
    id: uuid.UUID
    name: str
    kind: Literal["webhook", "apprise"]
    target: str


def alert_id(check_id: uuid.UUID, kind: AlertType) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{check_id}:{kind}")


def delivery_id(alert: uuid.UUID, channel: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{alert}:{channel}")


def notification_body(
    kind: AlertType,
    monitor: dict[str, Any],
    incident: Incident | None,
    check: StoredCheck,
) -> bytes:
    """The JSON a webhook channel receives. `monitor` is as the store reads it: its id, display
    name (`monitor_display_name` in SQL), URL and state."""
    document = {
        "type": kind,
        "monitor": {
            "id": str(monitor["id"]),
            "name": monitor["name"],
            "url": masked_url(monitor["url"]),
            "state": monitor["state"],
        },
        "incident": None if incident is None else incident.as_json(),
        "check": {
            "check_id": str(check.check_id),
            "checked_at": check.checked_at.isoformat(),
            "verdict": check.verdict,
            "status_code": check.status_code,
            "response_time_ms": check.response_time_ms,
            "error": check.error,
            "tls_expires_at": None
            if check.tls_expires_at is None
            else check.tls_expires_at.isoformat(),
        },
    }
    return json.dumps(document, separators=(",", ":")).encode()


def notification_text(kind: AlertType, monitor: dict[str, Any], incident: Incident | None) -> str:
    """The message an Apprise channel (chat, e-mail) shows a person."""
    name = monitor["name"]
    if kind == "monitor.tls_expiring":
        return f"{name}: its TLS certificate expires soon ({masked_url(monitor['url'])})"
    if kind == "monitor.up":
        after = ""
        if incident is not None and incident.resolved_at is not None:
            after = f" after {(incident.resolved_at - incident.started_at).total_seconds():.0f} s"
        return f"{name} is up again{after} ({masked_url(monitor['url'])})"
    state = "down" if kind == "monitor.down" else "degraded"
    cause = f": {incident.cause}" if incident is not None else ""
    return f"{name} is {state}{cause} ({masked_url(monitor['url'])})"
