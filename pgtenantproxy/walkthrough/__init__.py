"""``pgtenantproxy demo --walkthrough``: every migration phase, live, on throwaway clusters.

:mod:`.cluster` starts a unified cluster and one tenant server and loads the
HandyShop sample; :mod:`.workload` runs a steady app-like load through the
proxy; :mod:`.steps` lists the phases as named steps (later issues append
theirs); :mod:`.figures` takes and prints the live figures after each step;
:mod:`.run` puts it together and ends with every shop verified identical.
"""
