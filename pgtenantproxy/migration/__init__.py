"""The per-shop migration lifecycle: phases (the state machine), backfill, verification.

* :mod:`.phases`: the phases and the rule book (pure);
* :mod:`.store`: the fenced transitions in the control schema (the one writer);
* :mod:`.keeper`: the automatic moves the proxy makes (backfilled -> mirroring
  once drained, degraded and back, mirroring <-> reads_on_tenant by strategy).
"""
