"""What the manager tells the app proxies about an endpoint without routes (pure): hold or 503 at once."""

from __future__ import annotations

import uuid

from common.status import EndpointLifecycle, RouteHealth, RouteLifecycle
from manager.control.publisher import should_hold_requests
from manager.db.models import Endpoint, Route


def _endpoint(replicas: int, retries: int = 0, lifecycle: EndpointLifecycle = EndpointLifecycle.CREATED) -> Endpoint:
    return Endpoint(id=uuid.uuid4(), name="e", replicas=replicas, retries=retries, lifecycle=lifecycle)


def _routes(*lifecycles: RouteLifecycle) -> list:
    return [Route(id=uuid.uuid4(), lifecycle=lc, health=RouteHealth.NOT_CHECKED) for lc in lifecycles]


def test_hold_only_when_a_replica_is_coming() -> None:
    starting = _routes(RouteLifecycle.PROVISIONING)
    assert should_hold_requests(_endpoint(1), starting, wakeable=False)
    assert not should_hold_requests(_endpoint(1, retries=2), starting, wakeable=False), "starts are failing"
    assert not should_hold_requests(_endpoint(1), _routes(RouteLifecycle.FAILED_TO_START), wakeable=False)
    assert should_hold_requests(_endpoint(0), [], wakeable=True), "scale from zero"
    assert not should_hold_requests(_endpoint(0), [], wakeable=False), "nothing would wake it"
    assert not should_hold_requests(_endpoint(0, lifecycle=EndpointLifecycle.DESTROYING), [], wakeable=True)
