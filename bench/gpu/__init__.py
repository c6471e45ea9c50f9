"""The pieces of ``bench/gpu_serving.py`` (the entry point, its command line and docs).

* ``common``: the JSON-lines ``Recorder``, the per-figure failure and ``--budget-s`` guard,
  the device slug that names the results file;
* ``tokenizer``: which tokenizer the engine gets (Mistral v1 or a synthetic stand-in);
* ``engine``: our engine in this process (tp=1, no Ray) and one timed batch of requests;
* ``roofline``, ``decode``, ``throughput``, ``ttft``, ``turn2``: one figure each, ours and HF;
* ``ours`` and ``hf``: the two systems' runs, each loading its model once for all figures.

The HF model itself is ``bench/hf_peer.py``; the device ceilings are ``bench/roofline.py``.
"""
