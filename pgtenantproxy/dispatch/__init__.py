"""Routing at run time: the routing core wired to the session, the control plane and the pools.

* :mod:`.items` turns a client unit into the statements the routing core reads;
* :mod:`.catalog` keeps what routing needs from the control schema (tenant
  tables, shops whose tenant database is ready, per-shop overrides), refreshed
  in the background;
* :mod:`.dispatcher` is the session layer's router: it decides each unit,
  keeps per-session routing state, and samples shadow reads;
* :mod:`.runtime` builds all of it from a config snapshot.
"""
