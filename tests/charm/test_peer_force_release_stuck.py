"""Force-release under peer of a holder that hangs, its claim unpublished (published_queue).

A stuck holder (its machine froze after it claimed the grant) is what force-release is for:
"its queue and the next waiter proceed". The holder published its queue without the claim,
so the leader sees the revoked operation waiting at the head of that queue: it must not grant
it again to the stuck unit, but give the slot to the next waiter (found by a review).
"""

from __future__ import annotations

from test_switching_model import Model, Unit, run

from rollingops.backend_choice import Backend


def granted_to_app_1() -> Model:
    """Peer backend, app/1 granted, app/2 waiting behind it (app/0 leads)."""
    model = Model(1, units={name: Unit() for name in ("app/0", "app/1", "app/2")})
    model.etcd.up = False
    run(model, "worker-gives-up", "app/0")
    run(model, "lead")
    for name in model.units:
        run(model, "sync", name)
    run(model, "request", "app/1")
    run(model, "request", "app/2")
    for name in model.units:
        run(model, "sync", name)
    run(model, "lead")
    assert model.backend_decided() is Backend.PEER
    assert set(model.schedule.grants) == {"app/1"}
    return model


def stuck_holder_model() -> Model:
    model = granted_to_app_1()
    run(model, "sync", "app/1")  # claims its grant; then its machine freezes
    assert model.units["app/1"].record.queue.current is not None
    return model


def test_force_release_of_a_stuck_peer_holder_lets_the_next_waiter_run():
    model = stuck_holder_model()
    revoked_token = model.schedule.grants["app/1"].token
    run(model, "force-release", "app/1")  # on the leader (app/0 in the model), then its sync
    # app/1 is frozen from here on: only the leader's passes and the others' hooks run.
    for _ in range(3):
        run(model, "lead")
        run(model, "sync", "app/0")
        run(model, "sync", "app/2")
    grants = model.schedule.grants
    assert "app/2" in grants, f"the next waiter never gets the slot: {grants}"
    assert all(g.token != revoked_token for g in grants.values())


def test_force_release_of_a_grant_never_claimed_lets_the_next_waiter_run():
    """The same with the grant never claimed (backends.LocalLock.force_release's own case:
    "a grant is never claimed when the unit's machine is down")."""
    model = granted_to_app_1()  # app/1 goes down before claiming it
    run(model, "force-release", "app/1")
    for _ in range(3):
        run(model, "lead")
        run(model, "sync", "app/0")
        run(model, "sync", "app/2")
    assert "app/2" in model.schedule.grants, model.schedule.grants
