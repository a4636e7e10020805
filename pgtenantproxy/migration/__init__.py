"""The per-shop migration lifecycle: phases (the state machine), backfill, verification.

* :mod:`.phases`: the phases and the rule book (pure);
* :mod:`.store`: the fenced transitions in the control schema (the one writer);
* :mod:`.keeper`: the automatic moves the proxy makes (backfilled -> mirroring
  once drained, degraded and back, mirroring <-> reads_on_tenant by strategy),
  and, while it leads, id block refills (:mod:`.id_refill`);
* the key facts routing by key reads: id blocks (:mod:`.id_blocks`,
  :mod:`.id_refill`), the key directory (:mod:`.key_directory`, written at
  retirement), foreign-key proofs (:mod:`.fk_proofs`, by verify and cutover).
"""
