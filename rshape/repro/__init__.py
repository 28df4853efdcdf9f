"""`rshape repro` / `make repro-*`: published reward-shaping claims re-tested on the graded tiny world.

Modules: `claims` (each claim: paper, statement, sweep file, tests), `stats` (effects over seeds, the verdict
rule), `data` (reading a finished sweep), `run` (prepare → sweep → results → figures → verdict), `report`
(docs/reproductions.md).
"""
