"""`dmd2 eval`'s worker side (docs/pipeline.md §4): `python -m dmd2_worker.evaluate <spec.json>` samples teachers
and distilled students and measures them against the held-out split of a data source.

Modules: spec (the spec the CLI writes), models (teacher and student samplers), classifier and features (the
feature space), frechet (the distance), run (the evaluation), picture (the comparison image).
"""
