"""Quantization: the ``quantize`` pass (static QDQ) and ``bias-correct``, with what only they use.

* :mod:`.quantize_qdq` -- the pass: five steps (canonicalize, calibrate or replay, decide precisions, insert, record);
* :mod:`.config` -- its configuration; :mod:`.policy` -- what it does to each op type (one table);
* :mod:`.calibration` -- what it learns from data (ranges, means, Hessians, levels), or restores from a plan
  (:mod:`.planned_calibration`); :mod:`.plan_entry` -- the decisions it records;
* :mod:`.insert_qdq` -- the rewrite that inserts Q/DQ pairs, int8 weights and int32 biases;
* :mod:`.search` -- which nodes stay float (profile and accuracy-budget searches);
* :mod:`.activation_ranges`, :mod:`.range_search`, :mod:`.range_choice` -- calibration statistics and range choice;
* :mod:`.weight_rounding`, :mod:`.gptq`, :mod:`.cpu_target`, :mod:`.weight_storage` -- how weights are rounded and
  stored, for which CPU;
* :mod:`.bias_correct` -- the pass that corrects the output shift weight rounding causes.

Nothing is imported here: :mod:`onnxopt.passes._weights` (below the passes that use it) reads :mod:`.policy`,
which must load without the passes above it.
"""
